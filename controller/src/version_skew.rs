//! An agent that speaks another protocol version than this deployctl (README, "Version skew"):
//! what the hello exchange showed, and what the user can do about it. Pure; the transport
//! finds the skew, [`crate::connector`] words it for the host and env.

use std::fmt;

/// This deployctl's own version, as `--version` shows it.
const DEPLOYCTL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent at the other end speaks another protocol version: it said so in its hello, or
/// refused this deployctl's (README, "Version skew"; `proto::wire`'s module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSkew {
    /// This deployctl's protocol version.
    pub ours: u32,
    /// The agent's, when it said (its hello does, and so does its refusal).
    pub theirs: Option<u32>,
    pub agent_version: Option<String>,
    /// The agent's refusal, as it worded it.
    pub refusal: Option<String>,
}

impl fmt::Display for VersionSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ours = self.ours;
        match (self.theirs, &self.refusal) {
            (Some(theirs), _) => write!(
                f,
                "the agent speaks protocol version {theirs} (deploy-agent {}), this deployctl \
                 ({DEPLOYCTL_VERSION}) speaks version {ours}",
                self.agent_version.as_deref().unwrap_or("?")
            ),
            (None, refusal) => write!(
                f,
                "the agent refused protocol version {ours} of this deployctl \
                 ({DEPLOYCTL_VERSION}): {}",
                refusal.as_deref().unwrap_or("no reason given")
            ),
        }
    }
}

impl VersionSkew {
    /// The whole story for one host of `env`: where, what, and the way out. A newer agent
    /// needs a newer deployctl; an older one an upgrade (`deployctl setup --upgrade` installs
    /// the agent of this deployctl's version), or the deployctl it was installed with.
    pub fn explain(&self, target: &str, env: &str) -> String {
        let upgrade = format!("upgrade the agents with `deployctl setup --env {env} --upgrade`");
        let theirs = self.agent_version.as_deref().unwrap_or("?");
        let fix = match self.theirs {
            Some(p) if p > self.ours => {
                format!("the agent is newer: use the deployctl of its version ({theirs})")
            }
            Some(_) => {
                format!(
                    "the agent is older: {upgrade}, or use the deployctl of its version ({theirs})"
                )
            }
            None => format!(
                "{upgrade} (to this deployctl's version), or use the deployctl matching the agents' version"
            ),
        };
        format!("{target}: {self}; {fix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_skew_names_the_host_both_versions_and_a_fix() {
        let skew = |theirs: Option<u32>, refusal: Option<&str>| VersionSkew {
            ours: 3,
            theirs,
            agent_version: theirs.map(|_| "0.9.0".to_string()),
            refusal: refusal.map(str::to_string),
        };
        let cases = [
            skew(Some(4), None),
            skew(
                Some(2),
                Some("this agent (deploy-agent 0.9.0) speaks protocol version 2"),
            ),
            skew(None, Some("go away")),
        ];
        let shown: Vec<String> = cases
            .iter()
            .map(|s| {
                s.explain("deploy@10.0.0.5", "prod")
                    .replace(DEPLOYCTL_VERSION, "V")
            })
            .collect();
        expect_test::expect![[r#"
            deploy@10.0.0.5: the agent speaks protocol version 4 (deploy-agent 0.9.0), this deployctl (V) speaks version 3; the agent is newer: use the deployctl of its version (0.9.0)
            deploy@10.0.0.5: the agent speaks protocol version 2 (deploy-agent 0.9.0), this deployctl (V) speaks version 3; the agent is older: upgrade the agents with `deployctl setup --env prod --upgrade`, or use the deployctl of its version (0.9.0)
            deploy@10.0.0.5: the agent refused protocol version 3 of this deployctl (V): go away; upgrade the agents with `deployctl setup --env prod --upgrade` (to this deployctl's version), or use the deployctl matching the agents' version
        "#]]
        .assert_eq(&(shown.join("\n") + "\n"));
    }
}
