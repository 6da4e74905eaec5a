//! The ssh-agent client, for both things deployctl asks of an ssh-agent: its keys, to log in to
//! hosts ([`super::connect`]), and raw signatures, which [`crate::signer`] turns into signed
//! orders. It sits under the transport because the transport is the only code that touches
//! russh, whose agent client this wraps.

use std::path::Path;

use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::Signature;
use russh::keys::{HashAlg, PublicKey};
use tokio::net::UnixStream;

/// One connection to the ssh-agent listening on a unix socket. Errors are the agent's words,
/// for the caller to put in context.
pub(crate) struct SshAgent {
    client: AgentClient<UnixStream>,
}

impl SshAgent {
    pub(crate) async fn connect(socket: &Path) -> Result<SshAgent, String> {
        let client = AgentClient::connect_uds(socket)
            .await
            .map_err(|e| e.to_string())?;
        Ok(SshAgent { client })
    }

    /// The plain keys the agent holds, in its order; certificates are skipped (neither hosts
    /// nor orders use them).
    pub(crate) async fn public_keys(&mut self) -> Result<Vec<PublicKey>, String> {
        let identities = self
            .client
            .request_identities()
            .await
            .map_err(|e| e.to_string())?;
        Ok(identities
            .into_iter()
            .filter_map(|id| match id {
                AgentIdentity::PublicKey { key, .. } => Some(key),
                AgentIdentity::Certificate { .. } => None,
            })
            .collect())
    }

    /// The agent's raw signature by `key` over `data`.
    pub(crate) async fn sign(&mut self, key: &PublicKey, data: &[u8]) -> Result<Signature, String> {
        // OpenSSH signs SSHSIG with rsa-sha2-512 and refuses SHA-1 RSA signatures, so an RSA
        // key must be asked for that hash explicitly.
        let rsa_hash = key.algorithm().is_rsa().then_some(HashAlg::Sha512);
        self.client
            .sign_request_signature(key, rsa_hash, data)
            .await
            .map_err(|e| e.to_string())
    }

    /// The russh client itself, for public key authentication, which drives the agent.
    pub(super) fn client(&mut self) -> &mut AgentClient<UnixStream> {
        &mut self.client
    }
}
