//! k-of-n approvals (README, "Approvals"), as pure decisions over signed bytes.
//!
//! To an env whose hosts have `[approvals]`, a deploy or rollback is first a [`Proposal`]: the
//! release exactly as an order carries it (`image`, `images`, `migrate_image`), app, env,
//! action, ref, proposer and expiry, signed by the proposer like an order (namespace
//! `deployctl-order`: proposing asks for no more than an order would). Each approval is an
//! SSHSIG over the proposal's payload bytes in its own namespace, [`NAMESPACE`], so an approval
//! can never pass for an order or a proposal, and `ssh-keygen -Y sign -n deployctl-approval`
//! over those bytes makes one too.
//!
//! Nothing an agent keeps is trusted at the time of an order: [`check_order`] verifies the
//! proposal and every approval again from their signatures, against the `allowed_signers` and
//! `[approvals]` of that moment, so a revoked key stops counting at once and an edited state
//! file forges nothing.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accept::Rejection;
use crate::order::{Action, ImageRef, Order, is_valid_name};
use crate::sign::{self, AllowedSigners, Verified, VerifyError, verify_in};
use crate::time::Timestamp;
use crate::wire::RefusalKind;

/// The SSHSIG namespace of approvals.
pub const NAMESPACE: &str = "deployctl-approval";
/// How long a proposal waits for its approvals unless its proposer says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The longest a proposal may wait: an approval is for a release now, not some day.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A proposal names a handful of images; anything near this is not one. (A hundred held fit
/// one 4 MiB frame when listed.)
pub const MAX_PROPOSAL: usize = 16 * 1024;
/// How far a proposer's clock may run ahead of the agent's.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// `[approvals]` of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRules {
    /// Distinct approvers needed, the proposer not counted.
    pub required: usize,
    /// allowed_signers principals whose approvals count.
    pub principals: Vec<String>,
}

impl ApprovalRules {
    /// Rules that can be met; `Err` says why not, for a config error.
    pub fn check(&self) -> Result<(), String> {
        if self.required == 0 {
            return Err(
                "[approvals] required must be at least 1 (leave [approvals] out for none)".into(),
            );
        }
        if let Some(p) = self
            .principals
            .iter()
            .find(|p| p.is_empty() || p.contains(|c: char| c.is_whitespace() || c == ','))
        {
            return Err(format!(
                "[approvals] principals: {p:?} is not a principal (no spaces or commas)"
            ));
        }
        if self.principals.len() < self.required {
            return Err(format!(
                "[approvals] required = {} but principals lists {}: no proposal could ever be approved",
                self.required,
                self.principals.len()
            ));
        }
        Ok(())
    }

    /// Whether a key admitted by an allowed_signers line with this principals field may approve:
    /// one of its principals is listed.
    pub fn lists(&self, principals_field: &str) -> bool {
        principals_field
            .split(',')
            .any(|p| self.principals.iter().any(|listed| listed == p.trim()))
    }
}

/// A deploy or rollback waiting for approvals: exactly the release its orders will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// A ULID; what `approve` and the orders name.
    pub proposal_id: String,
    pub env: String,
    pub app: String,
    pub action: Action,
    /// What the proposer typed, for display.
    #[serde(rename = "ref")]
    pub reference: String,
    /// As in [`Order`]: the image of every service without an entry in `images`.
    pub image: ImageRef,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_image: Option<ImageRef>,
    /// Free text for humans, as an order's `issued_by`.
    pub proposed_by: String,
    pub proposed_at: Timestamp,
    pub expires_at: Timestamp,
    /// `--override-freeze REASON`: the approvals grant the release inside a freeze window too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_freeze: Option<String>,
}

impl Proposal {
    /// The proposal of what `order` would do (its host, id and services aside).
    pub fn for_order(
        order: &Order,
        proposal_id: String,
        proposed_at: Timestamp,
        expires_at: Timestamp,
    ) -> Proposal {
        Proposal {
            proposal_id,
            env: order.env.clone(),
            app: order.app.clone(),
            action: order.action,
            reference: order.reference.clone(),
            image: order.image.clone(),
            images: order.images.clone(),
            migrate_image: order.migrate_image.clone(),
            proposed_by: order.issued_by.clone(),
            proposed_at,
            expires_at,
            override_freeze: order.override_freeze.clone(),
        }
    }

    /// The exact bytes that are signed, held and approved.
    pub fn payload(&self) -> Result<String, sign::SignError> {
        serde_json::to_string(self)
            .map_err(|e| sign::SignError::Sign(format!("cannot serialize proposal: {e}")))
    }

    /// Parses a payload (strict: unknown fields are refused).
    pub fn parse(payload: &str) -> Result<Proposal, String> {
        serde_json::from_str(payload).map_err(|e| format!("not a proposal: {e}"))
    }

    /// Whether `order` does exactly what this proposal asks: same app, env, action and release.
    pub fn covers(&self, order: &Order) -> bool {
        self.app == order.app
            && self.env == order.env
            && self.action == order.action
            && self.image == order.image
            && self.images == order.images
            && self.migrate_image == order.migrate_image
            && self.override_freeze == order.override_freeze
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// `deploy of r/web@sha256:… (v2) for acme in prod`
    pub fn describe(&self) -> String {
        let mut text = describe_release(self.action, &self.image, &self.images, &self.reference)
            + &format!(" for {} in {}", self.app, self.env);
        if let Some(reason) = &self.override_freeze {
            text.push_str(&format!(", OVERRIDING any freeze: {reason:?}"));
        }
        text
    }
}

fn describe_release(
    action: Action,
    image: &ImageRef,
    images: &BTreeMap<String, ImageRef>,
    reference: &str,
) -> String {
    let mut release = image.to_string();
    for (service, i) in images {
        release.push_str(&format!(", {service}={i}"));
    }
    format!("{action} of {release} ({reference})")
}

/// The bytes of a proposal and its proposer's armored SSHSIG over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedProposal {
    pub payload: String,
    pub signature: String,
}

/// Who signed a proposal or an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// The principals field of the allowed_signers line that admitted the key.
    pub principal: String,
    /// `SHA256:…` of the key.
    pub fingerprint: String,
}

impl From<Verified> for Approver {
    fn from(v: Verified) -> Self {
        Approver {
            principal: v.principal,
            fingerprint: v.fingerprint,
        }
    }
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.principal, self.fingerprint)
    }
}

/// One approval as held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub approver: Approver,
    /// Armored SSHSIG over the proposal's payload, namespace [`NAMESPACE`].
    pub signature: String,
    pub at: Timestamp,
}

/// A proposal as an agent holds it, and as it lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldProposal {
    pub signed: SignedProposal,
    pub proposer: Approver,
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

impl HeldProposal {
    pub fn proposal(&self) -> Result<Proposal, String> {
        Proposal::parse(&self.signed.payload)
    }
}

fn refusal(kind: RefusalKind, message: String) -> Rejection {
    Rejection { kind, message }
}

/// A proposal as an agent of `env` receives it: size, the proposer's signature (a key trusted
/// for orders), then its shape and time. Returns the proposal and who proposed it.
pub fn verify_proposal(
    signed: &SignedProposal,
    signers: &AllowedSigners,
    env: &str,
    now: Timestamp,
) -> Result<(Proposal, Approver), Rejection> {
    if signed.payload.len() > MAX_PROPOSAL || signed.signature.len() > sign::MAX_SIGNATURE {
        return Err(refusal(
            RefusalKind::Oversized,
            format!(
                "proposal is {} bytes with a {}-byte signature; the limits are {MAX_PROPOSAL} and {}",
                signed.payload.len(),
                signed.signature.len(),
                sign::MAX_SIGNATURE
            ),
        ));
    }
    let proposer = verify_in(
        sign::NAMESPACE,
        signed.payload.as_bytes(),
        &signed.signature,
        signers,
        now,
    )
    .map_err(|e| match e {
        VerifyError::BadSignature(why) => refusal(
            RefusalKind::BadSignature,
            format!("proposal signature refused: {why}"),
        ),
        VerifyError::UnknownSigner { fingerprint, why } => refusal(
            RefusalKind::UnknownSigner,
            format!("proposal signed by key {fingerprint}, which this agent does not trust for env {env:?}: {why}"),
        ),
    })?;
    let proposal = Proposal::parse(&signed.payload)
        .map_err(|why| refusal(RefusalKind::Malformed, format!("proposal payload is {why}")))?;
    check_shape(&proposal, env, now)?;
    Ok((proposal, proposer.into()))
}

/// What serde cannot say about a proposal, and whether it is for this env, now.
fn check_shape(p: &Proposal, env: &str, now: Timestamp) -> Result<(), Rejection> {
    let malformed = |why: String| {
        refusal(
            RefusalKind::Malformed,
            format!("proposal {:?}: {why}", p.proposal_id),
        )
    };
    if !is_valid_id(&p.proposal_id) {
        return Err(malformed(
            "proposal_id must be 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    if !is_valid_name(&p.app) {
        return Err(malformed(format!("app {:?} is not a valid name", p.app)));
    }
    if !p.action.deploys() {
        return Err(malformed(format!(
            "{} orders need no approval; only deploys and rollbacks are proposed",
            p.action
        )));
    }
    if p.expires_at <= p.proposed_at || p.expires_at.since(p.proposed_at) > MAX_EXPIRY {
        return Err(malformed(format!(
            "expires_at {} must come after proposed_at {} and within {}",
            p.expires_at,
            p.proposed_at,
            crate::time::format_duration(MAX_EXPIRY)
        )));
    }
    if p.env != env {
        return Err(refusal(
            RefusalKind::EnvMismatch,
            format!(
                "proposal is for env {:?}, but this agent serves env {env:?}",
                p.env
            ),
        ));
    }
    if p.proposed_at > now.plus(MAX_SKEW) {
        return Err(refusal(
            RefusalKind::NotYetValid,
            format!(
                "proposal was made at {}, in the future (agent clock: {now}); check the clocks",
                p.proposed_at
            ),
        ));
    }
    if p.is_expired(now) {
        return Err(expired(p, now));
    }
    Ok(())
}

fn expired(p: &Proposal, now: Timestamp) -> Rejection {
    refusal(
        RefusalKind::Expired,
        format!(
            "proposal {} expired at {} (agent clock: {now}); propose it again",
            p.proposal_id, p.expires_at
        ),
    )
}

/// Proposal ids name entries of the agent's store and appear on command lines.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new approval of `held` (whose parsed proposal is `proposal`): refused when the proposal
/// expired, the signature is not over its payload in [`NAMESPACE`], the key is the proposer's,
/// not trusted, or its principal not listed, or the same key or principal already approved.
pub fn verify_approval(
    held: &HeldProposal,
    proposal: &Proposal,
    signature: &str,
    signers: &AllowedSigners,
    rules: &ApprovalRules,
    now: Timestamp,
) -> Result<Approver, Rejection> {
    if proposal.is_expired(now) {
        return Err(expired(proposal, now));
    }
    let earlier: Vec<&Approver> = held.approvals.iter().map(|a| &a.approver).collect();
    judge(held, proposal, signature, &earlier, signers, rules, now)
}

/// One approval against the proposer and the approvers counted before it.
fn judge(
    held: &HeldProposal,
    proposal: &Proposal,
    signature: &str,
    earlier: &[&Approver],
    signers: &AllowedSigners,
    rules: &ApprovalRules,
    now: Timestamp,
) -> Result<Approver, Rejection> {
    let id = &proposal.proposal_id;
    let proposer = &held.proposer;
    let self_approval = || {
        refusal(
            RefusalKind::SelfApproval,
            format!(
                "proposal {id} was made by {proposer}; a proposer cannot approve their own proposal"
            ),
        )
    };
    let payload = held.signed.payload.as_bytes();
    let approver: Approver = match verify_in(NAMESPACE, payload, signature, signers, now) {
        Ok(v) => v.into(),
        Err(VerifyError::BadSignature(why)) => {
            return Err(refusal(
                RefusalKind::BadSignature,
                format!(
                    "approval of proposal {id} refused: {why} (sign the proposal's exact bytes with \
                     `ssh-keygen -Y sign -n {NAMESPACE}`)"
                ),
            ));
        }
        // The proposer's key is usually trusted for orders only: say what was attempted, not
        // that the key is unknown.
        Err(VerifyError::UnknownSigner { fingerprint, .. })
            if fingerprint == proposer.fingerprint =>
        {
            return Err(self_approval());
        }
        Err(VerifyError::UnknownSigner { fingerprint, why }) => {
            return Err(refusal(
                RefusalKind::UnknownSigner,
                format!(
                    "approval of proposal {id} signed by key {fingerprint}, which this agent does not \
                     trust for approvals ({NAMESPACE}): {why}"
                ),
            ));
        }
    };
    if approver.fingerprint == proposer.fingerprint || approver.principal == proposer.principal {
        return Err(self_approval());
    }
    if !rules.lists(&approver.principal) {
        return Err(refusal(
            RefusalKind::NotAnApprover,
            format!(
                "approval of proposal {id} by {approver}: {:?} is not one of this host's [approvals] \
                 principals {:?}",
                approver.principal, rules.principals
            ),
        ));
    }
    if let Some(before) = earlier
        .iter()
        .find(|a| a.fingerprint == approver.fingerprint || a.principal == approver.principal)
    {
        return Err(refusal(
            RefusalKind::DuplicateApproval,
            format!("proposal {id} was already approved by {before}; each approver counts once"),
        ));
    }
    Ok(approver)
}

/// The approvals of `held` that count now, each verified again against today's trust and
/// rules (a key removed from allowed_signers or `[approvals]` no longer counts); one per
/// approver.
pub fn valid_approvals<'a>(
    held: &'a HeldProposal,
    proposal: &Proposal,
    signers: &AllowedSigners,
    rules: &ApprovalRules,
    now: Timestamp,
) -> Vec<&'a Approval> {
    let mut counted: Vec<&Approval> = Vec::new();
    for approval in &held.approvals {
        let earlier: Vec<&Approver> = counted.iter().map(|a| &a.approver).collect();
        let verdict = judge(
            held,
            proposal,
            &approval.signature,
            &earlier,
            signers,
            rules,
            now,
        );
        if verdict.is_ok_and(|who| who == approval.approver) {
            counted.push(approval);
        }
    }
    counted
}

/// Whether a host with `rules` may run `order` (None: the host needs no approvals). A deploy or
/// rollback must name a proposal in `held` (the proposal the host holds under that id, if any)
/// that covers it exactly, is unexpired, and has `required` approvals that count now. Exec and
/// maintenance orders need none. Returns how many approvals count, for the journal.
/// Whether `order` is the way back of `approved`, an order of the same rollout this host ran
/// under a proposal: a rollback naming the same proposal that puts every service back on the
/// digest `approved`'s outcome says it displaced. A rollout sends such orders when a later host
/// fails or its canary regresses; the approvals that let the release in let it out again, to
/// exactly where it was, and to nothing else.
pub fn is_revert_of(
    order: &Order,
    approved: &Order,
    approved_outcome: &crate::wire::Outcome,
) -> bool {
    order.action == Action::Rollback
        && approved.action.deploys()
        && order.rollout_id == approved.rollout_id
        && order.app == approved.app
        && order.proposal.is_some()
        && order.proposal == approved.proposal
        && order.migrate.is_none()
        && !order.services.is_empty()
        && order.services.keys().all(|s| {
            approved_outcome
                .services
                .get(s)
                .and_then(|r| r.previous_digest.as_deref())
                == Some(order.image_of(s).digest())
        })
}

pub fn check_order(
    order: &Order,
    held: Option<&HeldProposal>,
    signers: &AllowedSigners,
    rules: Option<&ApprovalRules>,
    now: Timestamp,
) -> Result<Option<usize>, Rejection> {
    let Some(rules) = rules.filter(|_| order.action.deploys()) else {
        return Ok(None);
    };
    let required = rules.required;
    let denied = |why: String| refusal(RefusalKind::ApprovalRequired, why);
    let Some(id) = &order.proposal else {
        return Err(denied(format!(
            "this host needs {required} approval(s) for a {} ([approvals] in its agent.toml), and order {} \
             names no proposal: 0 of {required} held. Propose it with the same push or rollback, then \
             `deployctl approve`",
            order.action, order.order_id
        )));
    };
    let Some(held) = held else {
        return Err(denied(format!(
            "order {} names proposal {id}, which this host does not hold (never proposed here, or expired \
             and pruned): 0 of {required} approvals held",
            order.order_id
        )));
    };
    let (proposal, _) = verify_proposal(&held.signed, signers, &order.env, now).map_err(|r| {
        denied(format!(
            "proposal {id} no longer counts ({}): 0 of {required} approvals held",
            r.message
        ))
    })?;
    if proposal.proposal_id != *id {
        return Err(denied(format!(
            "this host holds under {id} a proposal whose id is {}",
            proposal.proposal_id
        )));
    }
    if !proposal.covers(order) {
        return Err(denied(format!(
            "proposal {id} approves the {}, not this order's {} for {} in {}",
            proposal.describe(),
            describe_release(order.action, &order.image, &order.images, &order.reference),
            order.app,
            order.env
        )));
    }
    let counted = valid_approvals(held, &proposal, signers, rules, now);
    if counted.len() < required {
        let by: Vec<String> = counted
            .iter()
            .map(|a| a.approver.principal.clone())
            .collect();
        return Err(denied(format!(
            "proposal {id} holds {} of the {required} approvals it needs{}",
            counted.len(),
            if by.is_empty() {
                String::new()
            } else {
                format!(" (approved by {})", by.join(", "))
            }
        )));
    }
    Ok(Some(counted.len()))
}
