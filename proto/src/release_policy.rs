//! What a host lets become a release (agent.toml `[[freeze]]` and `[refs]`; README, "Release
//! policy"): when it takes releases at all ([`freeze`]) and which registry tags a release's
//! images must carry ([`refs`]). Only orders that put a release on a host are judged
//! ([`crate::order::Action::deploys`]: deploys and rollbacks); exec and maintenance orders change
//! no release.
//!
//! Both are pure decisions, like [`crate::policy`]: the time is the agent's own (when it accepts
//! the order, not the order's `issued_at`, which the signer chose), the time zones come from the
//! IANA database bundled into the binary (every host judges a window alike, whatever its
//! `/usr/share/zoneinfo` holds), and the tags are those the order carries, as the controller
//! saw them in the registry.

pub mod freeze;
pub mod refs;

use std::fmt;

use crate::order::Order;
use crate::time::Timestamp;

/// A host's `[[freeze]]` windows and `[refs]` rules. The default, neither, admits every release
/// at any time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleasePolicy {
    pub freeze: Vec<freeze::Window>,
    /// `None`: no `[refs]`, any tag (or none) will do.
    pub refs: Option<refs::RefRules>,
    /// The host has `[approvals]`: an order that overrides a freeze (`override_freeze`) passes
    /// the windows, since it cannot run without the env's approvals anyway. Without approvals
    /// there is no one to grant an override, and the windows hold.
    pub overridable: bool,
}

impl ReleasePolicy {
    pub fn is_empty(&self) -> bool {
        self.freeze.is_empty() && self.refs.is_none()
    }
}

/// Why a release is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A freeze window holds at the agent's `now`.
    Frozen {
        window: Box<freeze::Window>,
        now: Timestamp,
        /// The order asked to override it, on a host without `[approvals]`.
        override_refused: bool,
    },
    /// An image of the release has no tag `[refs]` admits, or one it never admits.
    Ref(refs::RefDenial),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Frozen {
                window,
                now,
                override_refused,
            } => {
                f.write_str(&window.refusal(*now))?;
                if *override_refused {
                    f.write_str(
                        "; --override-freeze needs the env's approvals, and this host has no \
                         [approvals] to grant it",
                    )?;
                }
                Ok(())
            }
            Refused::Ref(denial) => denial.fmt(f),
        }
    }
}

/// Judges `order` at the agent's `now`: a freeze first (no release at all, whatever its tags),
/// then the tags. Orders that put no release on the host pass. An order that overrides the
/// freeze passes the windows where the host has `[approvals]` (the agent then admits it only
/// with a proposal approved for exactly it, override included); `Ok(Some(window))` says which
/// window it overrides, for the journal.
pub fn check<'p>(
    policy: &'p ReleasePolicy,
    order: &Order,
    now: Timestamp,
) -> Result<Option<&'p freeze::Window>, Refused> {
    if !order.action.deploys() {
        return Ok(None);
    }
    let mut overridden = None;
    if let Some(window) = freeze::active(&policy.freeze, now) {
        let overriding = order.override_freeze.is_some();
        if !(overriding && policy.overridable) {
            return Err(Refused::Frozen {
                window: Box::new(window.clone()),
                now,
                override_refused: overriding,
            });
        }
        overridden = Some(window);
    }
    if let Some(rules) = &policy.refs {
        refs::check(rules, order).map_err(Refused::Ref)?;
    }
    Ok(overridden)
}

#[cfg(test)]
mod tests;
