//! What `approvals`, `approve` and a push or rollback that proposes say (README, "Approvals"):
//! one [`ProposalRow`] per proposal a host holds, and their summary; and how they read.

use std::collections::BTreeMap;

use proto::approval::{HeldProposal, Proposal};
use proto::order::{Action, ImageRef};
use proto::time::Timestamp;
use serde::Serialize;

use super::Inconsistent;
use crate::ExitClass;

/// One proposal as one host holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProposalRow {
    pub host: String,
    pub id: String,
    pub env: String,
    pub app: String,
    pub action: Action,
    #[serde(rename = "ref")]
    pub reference: String,
    pub image: ImageRef,
    /// Services on another image than `image`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate_image: Option<ImageRef>,
    /// The principal (and key) that proposed it.
    pub proposer: String,
    pub proposed_by: String,
    /// The principals whose approvals count now.
    pub approved_by: Vec<String>,
    pub held: usize,
    pub required: usize,
    pub expires_at: Timestamp,
    /// It asks to run inside a freeze window, for this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_freeze: Option<String>,
}

impl ProposalRow {
    /// The row of `held` on `host`; None when its payload is not a proposal.
    pub fn of(host: &str, held: &HeldProposal, required: usize) -> Option<ProposalRow> {
        let p: Proposal = held.proposal().ok()?;
        Some(ProposalRow {
            host: host.to_string(),
            id: p.proposal_id,
            env: p.env,
            app: p.app,
            action: p.action,
            reference: p.reference,
            image: p.image,
            images: p.images,
            migrate_image: p.migrate_image,
            proposer: held.proposer.to_string(),
            proposed_by: p.proposed_by,
            approved_by: held
                .approvals
                .iter()
                .map(|a| a.approver.principal.clone())
                .collect(),
            held: held.approvals.len(),
            required,
            expires_at: p.expires_at,
            override_freeze: p.override_freeze,
        })
    }

    pub fn approved(&self) -> bool {
        self.held >= self.required
    }

    /// `prod-1  01J…  deploy of r/web@sha256:0123456789ab (v2) by ci@acme: 1 of 2 approvals (alice@acme), expires …`
    pub fn line(&self) -> String {
        let mut release = self.image.to_string();
        for (s, i) in &self.images {
            release.push_str(&format!(", {s}={i}"));
        }
        let overriding = self
            .override_freeze
            .as_ref()
            .map(|r| format!(" OVERRIDING any freeze ({r:?})"))
            .unwrap_or_default();
        format!(
            "{}  {}  {} of {release} ({}){overriding} proposed by {} ({}): {} of {} approvals{}, expires {}",
            self.host,
            self.id,
            self.action,
            self.reference,
            self.proposer,
            self.proposed_by,
            self.held,
            self.required,
            if self.approved_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.approved_by.join(", "))
            },
            self.expires_at
        )
    }
}

/// How `approvals` or `approve` (or a push that proposed) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalsResult {
    /// `approvals`: the proposals were listed.
    Listed,
    /// A proposal waits for approvals (new, or found for the same release): exit 4.
    Waiting,
    /// `approve`: every host took the approval, and the proposal has what it needs.
    Approved,
    /// A host refused the proposal or the approval; nothing changed there.
    Refused,
    /// `approvals --show`: the proposal's bytes were written.
    Shown,
}

/// The summary of `approvals`, `approve`, and of a push or rollback that proposed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalsSummary {
    pub env: String,
    pub result: ApprovalsResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// The fewest approvals any host holds of the proposal, and how many it needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<usize>,
    /// Hosts that refused, with why; or could not be reached.
    pub refused: Vec<Inconsistent>,
    /// `approvals --show --out FILE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
}

impl ApprovalsSummary {
    pub fn new(env: &str, result: ApprovalsResult) -> ApprovalsSummary {
        ApprovalsSummary {
            env: env.to_string(),
            result,
            proposal: None,
            held: None,
            required: None,
            refused: Vec::new(),
            written: None,
        }
    }

    pub fn exit(&self) -> ExitClass {
        match self.result {
            ApprovalsResult::Listed | ApprovalsResult::Approved | ApprovalsResult::Shown => {
                ExitClass::Success
            }
            ApprovalsResult::Waiting => ExitClass::Waiting,
            ApprovalsResult::Refused => ExitClass::Refused,
        }
    }

    /// How it reads.
    pub fn lines(&self) -> Vec<String> {
        let id = self.proposal.as_deref().unwrap_or("?");
        let env = &self.env;
        let count = match (self.held, self.required) {
            (Some(h), Some(r)) => format!("{h} of {r} approvals"),
            _ => String::new(),
        };
        let mut lines = match self.result {
            ApprovalsResult::Listed => vec![format!("{env}: proposals listed")],
            ApprovalsResult::Waiting => vec![
                format!("proposal {id} waits for approvals in {env}: {count}"),
                format!(
                    "approve it with `deployctl approve {id} --env {env}`, then run it with `--run`"
                ),
            ],
            ApprovalsResult::Approved => vec![format!(
                "proposal {id} approved in {env}: {count}; run it with `deployctl approve {id} --env {env} --run` \
                 or the same push"
            )],
            ApprovalsResult::Refused => vec![format!(
                "proposal {id}: refused in {env}; nothing was changed"
            )],
            ApprovalsResult::Shown => vec![format!(
                "wrote the bytes of proposal {id} to {} (sign them with `ssh-keygen -Y sign -n {} -f KEY FILE`)",
                self.written.as_deref().unwrap_or("?"),
                proto::approval::NAMESPACE
            )],
        };
        lines.extend(
            self.refused
                .iter()
                .map(|r| format!("  {}: {}", r.host, r.why)),
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_approvals_exits_4_and_says_how_to_approve() {
        let mut s = ApprovalsSummary::new("prod", ApprovalsResult::Waiting);
        s.proposal = Some("01abc".into());
        s.held = Some(1);
        s.required = Some(2);
        assert_eq!(s.exit().code(), 4);
        assert_eq!(
            s.lines(),
            [
                "proposal 01abc waits for approvals in prod: 1 of 2 approvals",
                "approve it with `deployctl approve 01abc --env prod`, then run it with `--run`",
            ]
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["result"], "waiting");
        for (result, code) in [
            (ApprovalsResult::Listed, 0),
            (ApprovalsResult::Approved, 0),
            (ApprovalsResult::Shown, 0),
            (ApprovalsResult::Refused, 3),
        ] {
            assert_eq!(ApprovalsSummary::new("e", result).exit().code(), code);
        }
    }
}
