//! One change setup makes to a host: what it says it does, and the root shell script that does
//! it (each idempotent on its own, so a setup cut off half-way is finished by the next run).

use super::{AGENT_USER, BINARY, CONFIG_DIR, GROUP};
use crate::transport::shell_quote;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    CreateGroup,
    CreateAgentUser,
    AddAgentToDocker,
    /// With the setup login's authorized_keys, so the same keys reach it.
    CreateLoginUser {
        user: String,
    },
    AddLoginToGroup {
        user: String,
    },
    /// Upload, check the checksum on the host, then move into place.
    InstallBinary {
        replace: bool,
    },
    WriteFile {
        path: String,
        content: String,
    },
    ReloadSystemd,
    Start,
    Restart,
}

impl Step {
    pub fn write(path: &str, content: &str) -> Step {
        Step::WriteFile {
            path: path.to_string(),
            content: content.to_string(),
        }
    }

    /// What the step does, for the plan and the progress lines.
    pub fn describe(&self) -> String {
        match self {
            Step::CreateGroup => format!("create group {GROUP}"),
            Step::CreateAgentUser => {
                format!("create system user {AGENT_USER} (group {GROUP}, in docker)")
            }
            Step::AddAgentToDocker => format!("add {AGENT_USER} to group docker"),
            Step::CreateLoginUser { user } => {
                format!("create user {user} (in {GROUP}) with the setup login's authorized_keys")
            }
            Step::AddLoginToGroup { user } => format!("add {user} to group {GROUP}"),
            Step::InstallBinary { replace: false } => {
                format!("install {BINARY} (checksum verified)")
            }
            Step::InstallBinary { replace: true } => {
                format!("replace {BINARY} (checksum verified) once no job runs")
            }
            Step::WriteFile { path, .. } => format!("write {path}"),
            Step::ReloadSystemd => "systemctl daemon-reload".into(),
            Step::Start => "systemctl enable --now deploy-agent".into(),
            Step::Restart => "systemctl restart deploy-agent".into(),
        }
    }

    /// The script, run as root, with `sha256` the binary's checksum (for the upload) and
    /// `setup_user` the login whose authorized_keys a new deploy user gets.
    pub fn script(&self, sha256: &str, setup_user: &str) -> String {
        match self {
            Step::CreateGroup => {
                format!("getent group {GROUP} >/dev/null || groupadd --system {GROUP}")
            }
            Step::CreateAgentUser => format!(
                "id -u {AGENT_USER} >/dev/null 2>&1 || useradd --system --no-create-home \
                 --home-dir /nonexistent --shell /usr/sbin/nologin --gid {GROUP} --groups docker {AGENT_USER}"
            ),
            Step::AddAgentToDocker => format!("usermod -aG docker {AGENT_USER}"),
            Step::CreateLoginUser { user } => {
                let (u, from) = (shell_quote(user), shell_quote(setup_user));
                format!(
                    "set -e\n\
                     id -u {u} >/dev/null 2>&1 || useradd --create-home --shell /bin/sh --password '*' --groups {GROUP} {u}\n\
                     home=\"$(getent passwd {u} | cut -d: -f6)\"\n\
                     from=\"$(getent passwd {from} | cut -d: -f6)/.ssh/authorized_keys\"\n\
                     install -d -m 700 -o {u} -g \"$(id -gn {u})\" \"$home/.ssh\"\n\
                     if [ -s \"$from\" ] && [ ! -s \"$home/.ssh/authorized_keys\" ]; then\n\
                     install -m 600 -o {u} -g \"$(id -gn {u})\" \"$from\" \"$home/.ssh/authorized_keys\"\n\
                     fi"
                )
            }
            Step::AddLoginToGroup { user } => format!("usermod -aG {GROUP} {}", shell_quote(user)),
            Step::InstallBinary { .. } => format!(
                "set -e\n\
                 install -d -m 755 /usr/local/bin\n\
                 tmp={BINARY}.upload\n\
                 cat > \"$tmp\"\n\
                 if ! printf '%s  %s\\n' {sha256} \"$tmp\" | sha256sum -c --status; then\n\
                 rm -f \"$tmp\"; echo \"the uploaded binary's checksum is not {sha256}\" >&2; exit 1\n\
                 fi\n\
                 chmod 755 \"$tmp\"\n\
                 mv -f \"$tmp\" {BINARY}"
            ),
            Step::WriteFile { path, .. } => {
                let (mode, group) = if path.starts_with(CONFIG_DIR) {
                    ("640", GROUP)
                } else {
                    ("644", "root")
                };
                let p = shell_quote(path);
                format!(
                    "set -e\n\
                     install -d -m 750 -o root -g {GROUP} {CONFIG_DIR}\n\
                     tmp={p}.deployctl-new\n\
                     cat > \"$tmp\"\n\
                     chmod {mode} \"$tmp\"\n\
                     chown root:{group} \"$tmp\"\n\
                     mv -f \"$tmp\" {p}"
                )
            }
            Step::ReloadSystemd => "systemctl daemon-reload".into(),
            Step::Start => "systemctl enable --now deploy-agent".into(),
            Step::Restart => "systemctl restart deploy-agent".into(),
        }
    }

    /// What the script reads on stdin: the binary, or the file's content.
    pub fn input<'a>(&'a self, binary: &'a [u8]) -> &'a [u8] {
        match self {
            Step::InstallBinary { .. } => binary,
            Step::WriteFile { content, .. } => content.as_bytes(),
            _ => &[],
        }
    }
}
