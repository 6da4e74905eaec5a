//! k-of-n approvals (README, "Approvals"): the gate a push or rollback passes to an env whose
//! hosts have `[approvals]` ([`gate`]: run with the approved proposal for exactly this release,
//! or propose it and exit 4), `deployctl approvals` ([`list`], [`show`]) and `deployctl approve`
//! ([`approve`]). The agents hold the proposals and make every decision; this module asks them,
//! signs, and says what they answered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proto::approval::{self, HeldProposal, Proposal, SignedProposal};
use proto::order::{Action, Order, new_id};
use proto::time::Timestamp;
use proto::wire::SignedOrder;

use super::rollout::{Migrations, What, roll};
use super::{find_env, load_signer};
use crate::config::{DeployConfig, EnvConfig};
use crate::connector::{AgentConn, Transport, connect_all, report_connections};
use crate::output::{
    ApprovalsResult, ApprovalsSummary, Inconsistent, Message, Output, ProposalRow, Summary,
    SummaryBody,
};
use crate::release::{Pin, Release};
use crate::rollout::{OrderSigner, Ready, Target, decide};
use crate::signer::Signer;
use crate::transport::{Connection, Held};
use crate::{Error, ExitClass};

/// What a rollout does about approvals.
pub enum Gate {
    /// Go on: with no approvals needed (`None`), or naming the approved proposal.
    Go(Option<String>),
    /// A proposal waits (or was refused); its summary was said, with this exit.
    Wait(ExitClass),
}

/// Signs each order of a rollout naming its approved proposal, so the rollout's own code needs
/// to know nothing of approvals.
pub struct Naming<'a> {
    signer: &'a Signer,
    proposal: Option<String>,
}

impl<'a> Naming<'a> {
    pub fn new(signer: &'a Signer, proposal: Option<String>) -> Self {
        Naming { signer, proposal }
    }
}

impl OrderSigner for Naming<'_> {
    async fn sign(&self, order: &Order) -> Result<SignedOrder, String> {
        let mut order = order.clone();
        order.proposal = self.proposal.clone();
        OrderSigner::sign(self.signer, &order).await
    }
}

/// To an env where any host has `[approvals]`: the proposal every such host holds, approved, for
/// exactly what this rollout would order ([`Gate::Go`]); else the one waiting for approvals, or
/// a new one proposed to those hosts ([`Gate::Wait`], exit 4, its summary said).
pub async fn gate(
    cfg: &DeployConfig,
    ready: &mut Ready<Connection>,
    signer: &Signer,
    what: &What,
    out: &dyn Output,
) -> Result<Gate, Error> {
    if !ready.links.iter().any(|l| l.before.approvals.is_some()) {
        return Ok(Gate::Go(None));
    }
    check_expiry(what.expires)?;
    let spec = &ready.spec;
    let peer = ready.links[0].conn.peer().clone();
    let template = decide::build_order(cfg, spec, &peer, spec.action, &spec.release, false);
    let env = spec.env.clone();
    let mut held: BTreeMap<String, Vec<ProposalRow>> = BTreeMap::new();
    let mut hosts = 0;
    for link in ready
        .links
        .iter_mut()
        .filter(|l| l.before.approvals.is_some())
    {
        hosts += 1;
        let (all, required) = link.conn.proposals().await.map_err(|e| {
            Error::Refused(format!(
                "{}: cannot list its proposals: {e}",
                link.spec.name
            ))
        })?;
        for h in all.iter().filter(|h| covers(h, &template)) {
            if let Some(row) = ProposalRow::of(&link.spec.name, h, required) {
                held.entry(row.id.clone()).or_default().push(row);
            }
        }
    }
    // Held by every host that needs one; ids are ULIDs, so the last is the newest.
    held.retain(|_, rows| rows.len() == hosts);
    if let Some((id, rows)) = held
        .iter()
        .find(|(_, rows)| rows.iter().all(|r| r.approved()))
    {
        let least = rows.iter().map(|r| r.held).min().unwrap_or(0);
        out.emit(&Message::Note {
            message: format!(
                "proposal {id} approves this release ({least} of {} approvals); rolling it out",
                rows[0].required
            ),
        });
        return Ok(Gate::Go(Some(id.clone())));
    }
    let command = what.command();
    if let Some((id, rows)) = held.iter().next_back() {
        for row in rows {
            out.emit(&Message::Proposal(row.clone()));
        }
        let mut summary = ApprovalsSummary::new(&env, ApprovalsResult::Waiting);
        summary.proposal = Some(id.clone());
        summary.held = rows.iter().map(|r| r.held).min();
        summary.required = rows.first().map(|r| r.required);
        return Ok(Gate::Wait(said(out, command, summary)));
    }
    let now = Timestamp::now();
    let proposal = Proposal::for_order(&template, new_id(), now, now.plus(what.expires));
    let signed = sign_proposal(signer, &proposal).await?;
    let mut summary = ApprovalsSummary::new(&env, ApprovalsResult::Waiting);
    summary.proposal = Some(proposal.proposal_id.clone());
    summary.held = Some(0);
    for link in ready
        .links
        .iter_mut()
        .filter(|l| l.before.approvals.is_some())
    {
        let answer = link.conn.propose(signed.clone()).await;
        take(out, &link.spec.name, answer, &mut summary);
    }
    if !summary.refused.is_empty() {
        summary.result = ApprovalsResult::Refused;
    }
    Ok(Gate::Wait(said(out, command, summary)))
}

fn covers(held: &HeldProposal, order: &Order) -> bool {
    held.proposal().is_ok_and(|p| p.covers(order))
}

fn check_expiry(expires: Duration) -> Result<(), Error> {
    if expires.is_zero() || expires > approval::MAX_EXPIRY {
        return Err(Error::Usage(format!(
            "--expires must be longer than zero and at most {}",
            proto::time::format_duration(approval::MAX_EXPIRY)
        )));
    }
    Ok(())
}

/// The proposer signs a proposal as they would an order: it asks for no more than one.
async fn sign_proposal(signer: &Signer, p: &Proposal) -> Result<SignedProposal, Error> {
    let sign_err =
        |e: &dyn std::fmt::Display| Error::Refused(format!("cannot sign the proposal: {e}"));
    let payload = p.payload().map_err(|e| sign_err(&e))?;
    let signature = signer
        .sign(payload.as_bytes())
        .await
        .map_err(|e| sign_err(&e))?;
    Ok(SignedProposal { payload, signature })
}

/// One host's answer to a `propose` or `approve`, said and counted in `summary`.
fn take(
    out: &dyn Output,
    host: &str,
    answer: Result<Held, crate::transport::TransportError>,
    summary: &mut ApprovalsSummary,
) {
    match answer {
        Ok(Ok((held, required))) => {
            summary.required = Some(required);
            if let Some(row) = ProposalRow::of(host, &held, required) {
                summary.held = Some(summary.held.map_or(row.held, |h| h.min(row.held)));
                out.emit(&Message::Proposal(row));
            }
        }
        Ok(Err(refusal)) => {
            out.emit(&Message::Refused {
                host: host.to_string(),
                refusal: refusal.clone(),
            });
            summary.refused.push(Inconsistent {
                host: host.to_string(),
                why: format!("{}: {}", refusal.kind, refusal.message),
            });
        }
        Err(e) => {
            out.emit(&Message::HostError {
                host: host.to_string(),
                kind: Some((&e).into()),
                error: e.to_string(),
            });
            summary.refused.push(Inconsistent {
                host: host.to_string(),
                why: e.to_string(),
            });
        }
    }
}

fn said(out: &dyn Output, command: &'static str, summary: ApprovalsSummary) -> ExitClass {
    let summary = Summary::new(command, SummaryBody::Approvals(summary));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    exit
}

/// Every host of the env connected, or a refusal naming those that are not: an approval must
/// reach every host, since each decides alone.
async fn connect_every(
    env: &EnvConfig,
    out: &dyn Output,
) -> Result<Vec<(String, Connection)>, Error> {
    let results = connect_all(&Transport::for_env(env), &env.name, &env.hosts).await;
    report_connections(out, &env.hosts, &results);
    let mut conns = Vec::new();
    let mut down = Vec::new();
    for (h, r) in env.hosts.iter().zip(results) {
        match r {
            Ok(c) => conns.push((h.name.clone(), c)),
            Err(e) => down.push(format!("  {}: {e}", h.name)),
        }
    }
    if !down.is_empty() {
        return Err(Error::Refused(format!(
            "{} of {} host(s) of {} cannot be reached or verified:\n{}",
            down.len(),
            env.hosts.len(),
            env.name,
            down.join("\n")
        )));
    }
    Ok(conns)
}

/// Every host's copy of proposal `id` (the hosts that hold it), with the approvals it needs.
async fn find(
    conns: &mut [(String, Connection)],
    id: &str,
) -> Result<Vec<(String, HeldProposal, usize)>, Error> {
    let mut found = Vec::new();
    for (host, conn) in conns.iter_mut() {
        let (all, required) = conn
            .proposals()
            .await
            .map_err(|e| Error::Refused(format!("{host}: cannot list its proposals: {e}")))?;
        if let Some(h) = all
            .into_iter()
            .find(|h| h.proposal().is_ok_and(|p| p.proposal_id == id))
        {
            found.push((host.clone(), h, required));
        }
    }
    Ok(found)
}

/// `deployctl approvals --env E`: every unexpired proposal each host holds.
pub async fn list(
    cfg: &DeployConfig,
    env_name: &str,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let mut conns = connect_every(env, out).await?;
    for (host, conn) in conns.iter_mut() {
        let (all, required) = conn
            .proposals()
            .await
            .map_err(|e| Error::Refused(format!("{host}: cannot list its proposals: {e}")))?;
        let rows = all
            .iter()
            .filter_map(|h| ProposalRow::of(host, h, required));
        for row in rows.filter(|r| r.app == cfg.app) {
            out.emit(&Message::Proposal(row));
        }
    }
    Ok(said(
        out,
        "approvals",
        ApprovalsSummary::new(&env.name, ApprovalsResult::Listed),
    ))
}

/// `deployctl approvals --env E --show ID --out FILE`: the exact bytes approvers sign.
pub async fn show(
    cfg: &DeployConfig,
    env_name: &str,
    id: &str,
    file: &Path,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let mut conns = connect_every(env, out).await?;
    let found = find(&mut conns, id).await?;
    let (_, held, _) = found.first().ok_or_else(|| not_held(env, id))?;
    std::fs::write(file, held.signed.payload.as_bytes())
        .map_err(|e| Error::Refused(format!("cannot write {}: {e}", file.display())))?;
    let mut summary = ApprovalsSummary::new(&env.name, ApprovalsResult::Shown);
    summary.proposal = Some(id.to_string());
    summary.written = Some(file.display().to_string());
    Ok(said(out, "approvals", summary))
}

fn not_held(env: &EnvConfig, id: &str) -> Error {
    Error::Refused(format!(
        "no host of {} holds proposal {id} (see `deployctl approvals --env {}`; expired proposals are forgotten)",
        env.name, env.name
    ))
}

/// What `approve` was asked.
pub struct ApproveArgs<'a> {
    pub env: &'a str,
    pub id: &'a str,
    pub run: bool,
    /// An armored signature made elsewhere, instead of signing with the env's key.
    pub signature: Option<&'a Path>,
}

/// `deployctl approve ID --env E [--run] [--signature FILE]`.
pub async fn approve(
    cfg: &DeployConfig,
    args: ApproveArgs<'_>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, args.env)?;
    let mut conns = connect_every(env, out).await?;
    let found = find(&mut conns, args.id).await?;
    let (_, held, _) = found.first().ok_or_else(|| not_held(env, args.id))?;
    let proposal = held
        .proposal()
        .map_err(|e| Error::Refused(format!("proposal {}: {e}", args.id)))?;
    let signature = match args.signature {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| Error::Refused(format!("cannot read {}: {e}", file.display())))?,
        None => load_signer(env)
            .await?
            .sign_in(approval::NAMESPACE, held.signed.payload.as_bytes())
            .await
            .map_err(|e| Error::Refused(format!("cannot sign the approval: {e}")))?,
    };
    let holders: BTreeSet<String> = found.iter().map(|(h, _, _)| h.clone()).collect();
    let mut summary = ApprovalsSummary::new(&env.name, ApprovalsResult::Waiting);
    summary.proposal = Some(args.id.to_string());
    for (host, conn) in conns.iter_mut().filter(|(h, _)| holders.contains(h)) {
        let answer = conn.approve(args.id, &signature).await;
        take(out, host, answer, &mut summary);
    }
    let approved = summary
        .held
        .zip(summary.required)
        .is_some_and(|(h, r)| h >= r);
    summary.result = match (summary.refused.is_empty(), approved) {
        (false, _) => ApprovalsResult::Refused,
        (true, true) => ApprovalsResult::Approved,
        (true, false) => ApprovalsResult::Waiting,
    };
    if !(args.run && summary.result == ApprovalsResult::Approved) {
        return Ok(said(out, "approve", summary));
    }
    drop(conns);
    run(cfg, env, &proposal, out).await
}

/// `approve --run`: the proposal's own release rolled out, as the push or rollback that
/// proposed it would (the gate finds the proposal approved).
async fn run(
    cfg: &DeployConfig,
    env: &EnvConfig,
    p: &Proposal,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let release = release_of(cfg, p)?;
    let what = match p.action {
        Action::Rollback => What::rollback(Some(&p.reference)),
        _ => What::push(&p.reference, Migrations::Once),
    }
    .with_override(p.override_freeze.clone());
    roll(cfg, env, &what, Target::Release(release), Vec::new(), out).await
}

/// The release a proposal names, for deploy.toml's services.
fn release_of(cfg: &DeployConfig, p: &Proposal) -> Result<Release, Error> {
    let pins = cfg.services.keys().map(|s| {
        let image = p.images.get(s).unwrap_or(&p.image).clone();
        let pin = Pin {
            image,
            reference: p.reference.clone(),
        };
        (s.clone(), pin)
    });
    Release::new(p.reference.clone(), pins.collect(), p.migrate_image.clone()).ok_or_else(|| {
        Error::Refused("deploy.toml has no service to roll the proposal out to".into())
    })
}
