//! Commands run over an SSH login, for `deployctl setup` and `doctor`: what a human would type
//! in `ssh root@host '…'`, with the same host key check and keys as every other connection.

use std::time::Duration;

use russh::ChannelMsg;

use super::ssh::{self, Login};
use super::{ConnectOptions, TransportError};
use crate::config::SshTarget;

/// How long one remote command may take: an upload of the agent's binary is the longest.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// A logged-in SSH connection that runs shell commands.
pub struct RemoteShell {
    login: Login,
}

impl std::fmt::Debug for RemoteShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteShell")
            .field("host", &self.login.display)
            .field("user", &self.login.user)
            .finish()
    }
}

/// What a remote command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// None when the server reported no exit status (killed by a signal).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ShellOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

impl RemoteShell {
    /// Logs in to `t` (after `~/.ssh/config`) within `opts.timeout`.
    pub async fn open(t: &SshTarget, opts: &ConnectOptions) -> Result<RemoteShell, TransportError> {
        match tokio::time::timeout(opts.timeout, ssh::login(t, opts)).await {
            Ok(login) => Ok(RemoteShell { login: login? }),
            Err(_) => Err(TransportError::Unreachable(format!(
                "{}: no answer within {}s",
                t.addr,
                opts.timeout.as_secs()
            ))),
        }
    }

    /// `addr` or `[addr]:port`.
    pub fn display(&self) -> &str {
        &self.login.display
    }

    /// The user this shell is logged in as.
    pub fn user(&self) -> &str {
        &self.login.user
    }

    /// `SHA256:…` of the host key that passed the known_hosts check.
    pub fn host_key(&self) -> Option<&str> {
        self.login.host_key.as_deref()
    }

    /// Runs `command` (by the login's shell), feeding it `stdin` then end-of-file.
    pub async fn run(&self, command: &str, stdin: &[u8]) -> Result<ShellOutput, TransportError> {
        let display = &self.login.display;
        let exchange = async {
            let mut channel = self
                .login
                .handle
                .channel_open_session()
                .await
                .map_err(|e| {
                    TransportError::Closed(format!("{display}: cannot open an SSH channel: {e}"))
                })?;
            channel.exec(true, command.as_bytes()).await.map_err(|e| {
                TransportError::Closed(format!("{display}: cannot run a command: {e}"))
            })?;
            if !stdin.is_empty() {
                channel.data(stdin).await.map_err(|e| {
                    TransportError::Closed(format!("{display}: sending the command's input: {e}"))
                })?;
            }
            channel
                .eof()
                .await
                .map_err(|e| TransportError::Closed(format!("{display}: {e}")))?;
            let mut out = ShellOutput {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok(out)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Closed(format!(
                "{display}: a command did not finish within {}s",
                COMMAND_TIMEOUT.as_secs()
            ))),
        }
    }
}
