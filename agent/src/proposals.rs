//! Proposals waiting for approvals (README, "Approvals"): the store on disk, and what the agent
//! does for `propose`, `proposals`, `approve` and for a deploy or rollback order on a host with
//! `[approvals]`. Every decision is `proto::approval`'s; this module keeps the proposals
//! durably (they survive restarts) and forgets them once expired.
//!
//! The store is trusted for nothing but holding bytes: an order is checked against proposals
//! and approvals verified again from their signatures at that moment.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use deploy::durable;
use proto::Order;
use proto::accept::Rejection;
use proto::approval::{
    self, Approval, ApprovalRules, HeldProposal, SignedProposal, check_order, valid_approvals,
    verify_approval, verify_proposal,
};
use proto::sign::AllowedSigners;
use proto::time::Timestamp;
use proto::wire::RefusalKind;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::backend::Backend;
use crate::job::{blocking, lock};

/// Most proposals held at once: a trusted key that proposes in a loop fills no disk.
pub const MAX_HELD: usize = 100;

const FILE_VERSION: u32 = 1;

/// The proposals held, by id, in one JSON file rewritten through [`durable::write_atomic`].
#[derive(Debug)]
pub struct ProposalStore {
    path: PathBuf,
    held: BTreeMap<String, HeldProposal>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalsFile {
    version: u32,
    proposals: BTreeMap<String, HeldProposal>,
}

impl ProposalStore {
    /// Opens (or starts) the store at `path`, forgetting expired proposals. A file that cannot
    /// be read as a store is moved aside (`*.corrupt`) and the store starts empty: losing
    /// proposals only means proposing again, and nothing in the file is trusted anyway. The
    /// second value says what happened, for the log.
    pub fn open(path: &Path, now: Timestamp) -> (ProposalStore, Option<String>) {
        let mut store = ProposalStore {
            path: path.to_owned(),
            held: BTreeMap::new(),
        };
        let problem = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<ProposalsFile>(&bytes) {
                Ok(file) if file.version == FILE_VERSION => {
                    store.held = file.proposals;
                    None
                }
                Ok(file) => Some(store.set_aside(&format!("version {}", file.version))),
                Err(e) => Some(store.set_aside(&e.to_string())),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(format!(
                "cannot read {}: {e}; no proposal is held",
                path.display()
            )),
        };
        store.held.retain(|_, h| !expired(h, now));
        (store, problem)
    }

    /// The store of the agent whose state directory is `state_dir`, what became of an
    /// unreadable one logged.
    pub fn open_in(state_dir: &Path) -> ProposalStore {
        let (store, problem) = Self::open(&state_dir.join("proposals.json"), Timestamp::now());
        if let Some(p) = problem {
            tracing::error!("{p}");
        }
        store
    }

    fn set_aside(&self, why: &str) -> String {
        let aside = self.path.with_extension("json.corrupt");
        let moved = std::fs::rename(&self.path, &aside)
            .map(|()| format!("moved aside as {}", aside.display()))
            .unwrap_or_else(|e| format!("could not move it aside: {e}"));
        format!(
            "proposal store {} is unreadable ({why}); {moved}: pending proposals must be proposed again",
            self.path.display()
        )
    }

    pub fn get(&self, id: &str) -> Option<&HeldProposal> {
        self.held.get(id)
    }

    /// The unexpired proposals, oldest first (ids are ULIDs).
    pub fn unexpired(&self, now: Timestamp) -> Vec<&HeldProposal> {
        self.held.values().filter(|h| !expired(h, now)).collect()
    }

    /// Holds a new proposal durably; expired ones are forgotten on the way.
    pub fn insert(&mut self, id: &str, held: HeldProposal, now: Timestamp) -> io::Result<()> {
        self.change(now, |all| {
            all.insert(id.to_string(), held);
        })
    }

    /// Adds an approval to a held proposal, durably.
    pub fn approve(&mut self, id: &str, approval: Approval, now: Timestamp) -> io::Result<()> {
        self.change(now, |all| {
            if let Some(h) = all.get_mut(id) {
                h.approvals.push(approval);
            }
        })
    }

    /// Forgets expired proposals (durably, when there were any).
    pub fn prune(&mut self, now: Timestamp) -> io::Result<()> {
        if self.held.values().any(|h| expired(h, now)) {
            self.change(now, |_| {})?;
        }
        Ok(())
    }

    /// Applies `f` and saves; on error the store is as it was, in memory and on disk.
    fn change(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut BTreeMap<String, HeldProposal>),
    ) -> io::Result<()> {
        let mut next = self.held.clone();
        next.retain(|_, h| !expired(h, now));
        f(&mut next);
        let file = ProposalsFile {
            version: FILE_VERSION,
            proposals: next,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        durable::write_atomic(&self.path, &bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot save proposal store {}: {e}", self.path.display()),
            )
        })?;
        self.held = file.proposals;
        Ok(())
    }
}

/// An unreadable payload counts as expired: it can never be approved.
fn expired(h: &HeldProposal, now: Timestamp) -> bool {
    h.proposal().map_or(true, |p| p.is_expired(now))
}

fn refused(kind: RefusalKind, message: String) -> Rejection {
    Rejection { kind, message }
}

fn not_saved(e: io::Error) -> Rejection {
    refused(RefusalKind::Internal, format!("{e}; nothing was changed"))
}

impl<B: Backend> Agent<B> {
    /// The rules and the trust of this moment, or why this host takes no proposals.
    fn approval_context(&self) -> Result<(&ApprovalRules, AllowedSigners), Rejection> {
        let rules = self.config().approvals.as_ref().ok_or_else(|| {
            refused(
                RefusalKind::PolicyDenied,
                "this host needs no approvals ([approvals] is not in its agent.toml): push without a proposal"
                    .into(),
            )
        })?;
        let signers = self.config().load_allowed_signers().map_err(|e| {
            refused(
                RefusalKind::UnknownSigner,
                format!(
                    "this agent cannot read its allowed_signers, so it trusts no one right now: {e}"
                ),
            )
        })?;
        Ok((rules, signers))
    }

    /// `held` as listed: only the approvals that count now.
    fn shown(&self, held: &HeldProposal, signers: &AllowedSigners, now: Timestamp) -> HeldProposal {
        let mut shown = held.clone();
        if let (Ok(p), Some(rules)) = (held.proposal(), &self.config().approvals) {
            shown.approvals = valid_approvals(held, &p, signers, rules, now)
                .into_iter()
                .cloned()
                .collect();
        }
        shown
    }

    /// Holds a signed proposal until it expires; returns it as held and the approvals required.
    pub fn propose(&self, signed: SignedProposal) -> Result<(HeldProposal, usize), Rejection> {
        let (rules, signers) = self.approval_context()?;
        let now = Timestamp::now();
        let (proposal, proposer) = verify_proposal(&signed, &signers, &self.config().env, now)?;
        let id = proposal.proposal_id.clone();
        let held = HeldProposal {
            signed,
            proposer,
            approvals: Vec::new(),
        };
        let mut store = lock(&self.proposals);
        match store.get(&id) {
            // The same proposal again (a retry): nothing to do.
            Some(h) if h.signed == held.signed => return Ok((h.clone(), rules.required)),
            Some(_) => {
                return Err(refused(
                    RefusalKind::Malformed,
                    format!("this host already holds another proposal with id {id}"),
                ));
            }
            None => {}
        }
        if store.unexpired(now).len() >= MAX_HELD {
            return Err(refused(
                RefusalKind::Oversized,
                format!(
                    "this host already holds {MAX_HELD} proposals; approve or let some expire first"
                ),
            ));
        }
        blocking(|| store.insert(&id, held.clone(), now)).map_err(not_saved)?;
        tracing::info!(proposal = %id, proposer = %held.proposer, "proposal held: {}", proposal.describe());
        Ok((held, rules.required))
    }

    /// The unexpired proposals, each with the approvals that count now; and how many it needs
    /// (0 on a host without `[approvals]`).
    pub fn proposals(&self) -> (Vec<HeldProposal>, usize) {
        let Ok((rules, signers)) = self.approval_context() else {
            return (Vec::new(), 0);
        };
        let now = Timestamp::now();
        let store = lock(&self.proposals);
        let all = store.unexpired(now);
        let shown = all.into_iter().map(|h| self.shown(h, &signers, now));
        (shown.collect(), rules.required)
    }

    /// Adds an approval (an SSHSIG over the proposal's payload) after `proto::approval`'s
    /// checks; the signature is verified with no lock held.
    pub fn approve(&self, id: &str, signature: &str) -> Result<(HeldProposal, usize), Rejection> {
        let (rules, signers) = self.approval_context()?;
        let now = Timestamp::now();
        let unknown = || {
            refused(
                RefusalKind::UnknownProposal,
                format!(
                    "this host ({}) holds no proposal {id:?} (never proposed here, or expired and pruned)",
                    self.config().host
                ),
            )
        };
        let held = lock(&self.proposals).get(id).cloned().ok_or_else(unknown)?;
        let proposal = held.proposal().map_err(|_| unknown())?;
        let verdict = verify_approval(&held, &proposal, signature, &signers, rules, now);
        if let Err(r) = &verdict
            && r.kind == RefusalKind::Expired
        {
            // Refused first, so the approver learns why, then forgotten.
            let _ = blocking(|| lock(&self.proposals).prune(now));
        }
        let approver = verdict?;
        let mut store = lock(&self.proposals);
        let current = store.get(id).cloned().ok_or_else(unknown)?;
        // Another approval may have landed while this one was verified.
        if let Some(before) = current.approvals.iter().find(|a| {
            a.approver.fingerprint == approver.fingerprint
                || a.approver.principal == approver.principal
        }) {
            return Err(refused(
                RefusalKind::DuplicateApproval,
                format!(
                    "proposal {id} was already approved by {}; each approver counts once",
                    before.approver
                ),
            ));
        }
        let approval = Approval {
            approver: approver.clone(),
            signature: signature.to_string(),
            at: now,
        };
        blocking(|| store.approve(id, approval, now)).map_err(not_saved)?;
        tracing::info!(proposal = %id, approver = %approver, "proposal approved");
        let held = store.get(id).cloned().ok_or_else(unknown)?;
        drop(store);
        Ok((self.shown(&held, &signers, now), rules.required))
    }

    /// Whether this host may run `order` as far as approvals go (`proto::approval::check_order`);
    /// the signatures are verified with no lock held.
    /// A rollback that undoes, on this host, an order of the same rollout it ran under an
    /// approved proposal ([`approval::is_revert_of`]).
    fn is_approved_revert(&self, order: &Order) -> bool {
        let Some(proposal) = order.proposal.as_deref() else {
            return false;
        };
        let index = lock(&self.index);
        index
            .approved_in_rollout(&order.rollout_id, proposal)
            .into_iter()
            .filter(|s| s.order.action == proto::Action::Deploy)
            .any(|s| {
                s.outcome
                    .as_ref()
                    .is_some_and(|o| approval::is_revert_of(order, &s.order, o))
            })
    }

    pub(crate) fn check_approval(&self, order: &Order) -> Result<(), Rejection> {
        let Some(rules) = self.config().approvals.as_ref() else {
            return Ok(());
        };
        if !order.action.deploys() {
            return Ok(());
        }
        if self.is_approved_revert(order) {
            tracing::info!(order_id = %order.order_id, rollout_id = %order.rollout_id, "a rollback of an approved rollout's order, back to where it was: admitted");
            return Ok(());
        }
        let (_, signers) = self.approval_context()?;
        let held = order
            .proposal
            .as_deref()
            .filter(|id| approval::is_valid_id(id))
            .and_then(|id| lock(&self.proposals).get(id).cloned());
        let counted = check_order(
            order,
            held.as_ref(),
            &signers,
            Some(rules),
            Timestamp::now(),
        )
        .inspect_err(|r| {
            tracing::warn!(order_id = %order.order_id, kind = %r.kind, "order refused: {}", r.message)
        })?;
        if let (Some(n), Some(id)) = (counted, &order.proposal) {
            tracing::info!(order_id = %order.order_id, proposal = %id, "order carries proposal {id}, approved {n} of {}", rules.required);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::approval::{Approver, Proposal};

    use super::*;

    fn held(id: &str, expires_at: Timestamp) -> HeldProposal {
        let order = crate::journal::tests::order("o1", 'a');
        let p = Proposal::for_order(&order, id.into(), order.issued_at, expires_at);
        HeldProposal {
            signed: SignedProposal {
                payload: p.payload().unwrap(),
                signature: "sig".into(),
            },
            proposer: Approver {
                principal: "ci".into(),
                fingerprint: "SHA256:x".into(),
            },
            approvals: Vec::new(),
        }
    }

    #[test]
    fn proposals_survive_a_reopen_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proposals.json");
        let now = Timestamp::from_unix_secs(1_800_000_000);
        let (mut store, problem) = ProposalStore::open(&path, now);
        assert_eq!(problem, None);
        let soon = now.plus(Duration::from_secs(60));
        store.insert("p1", held("p1", soon), now).unwrap();
        store
            .insert("p2", held("p2", now.plus(Duration::from_secs(3600))), now)
            .unwrap();
        let approval = Approval {
            approver: Approver {
                principal: "alice".into(),
                fingerprint: "SHA256:a".into(),
            },
            signature: "s".into(),
            at: now,
        };
        store.approve("p2", approval.clone(), now).unwrap();

        let (store, _) = ProposalStore::open(&path, now);
        assert_eq!(store.unexpired(now).len(), 2);
        assert_eq!(store.get("p2").unwrap().approvals, vec![approval]);
        let later = soon.plus(Duration::from_secs(1));
        assert_eq!(store.unexpired(later).len(), 1, "p1 expired");
        let (mut store, _) = ProposalStore::open(&path, later);
        assert!(store.get("p1").is_none(), "expired proposals are forgotten");
        store.prune(later).unwrap();
        assert!(store.get("p2").is_some());
    }

    #[test]
    fn an_unreadable_store_is_set_aside_and_the_agent_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proposals.json");
        let now = Timestamp::from_unix_secs(1_800_000_000);
        for bad in [
            &b"{not json"[..],
            b"{\"version\":9,\"proposals\":{}}",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, bad).unwrap();
            let (store, problem) = ProposalStore::open(&path, now);
            assert!(store.unexpired(now).is_empty());
            let problem = problem.unwrap();
            assert!(problem.contains("moved aside"), "{problem}");
            assert!(dir.path().join("proposals.json.corrupt").is_file());
        }
        // A held proposal whose payload is not one is never listed.
        let (mut store, _) = ProposalStore::open(&path, now);
        let mut garbage = held("p3", now.plus(Duration::from_secs(60)));
        garbage.signed.payload = "{}".into();
        store.insert("p3", garbage, now).unwrap();
        assert!(store.unexpired(now).is_empty());
    }
}
