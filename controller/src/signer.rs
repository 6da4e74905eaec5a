//! The order signer: an OpenSSH private key file or a key held by a running ssh-agent (hardware
//! keys included), and the key files `deployctl keys generate` writes. `proto::sign` makes and
//! checks the SSHSIG signatures; this module finds the key, reads and writes files and talks
//! to the ssh-agent.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use proto::order::Order;
use proto::sign::{self, PrivateKey, PublicKey};
use proto::wire::SignedOrder;

use crate::transport::ssh_agent::SshAgent;

/// Where [`Signer::from_key_file`] reads the passphrase of an encrypted key.
pub const PASSPHRASE_ENV: &str = "DEPLOYCTL_KEY_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable OpenSSH private key: {why}")]
    KeyFormat { path: PathBuf, why: String },
    #[error(
        "{path} is encrypted; load it into ssh-agent (`ssh-add {path}`) or put its passphrase in the \
         {PASSPHRASE_ENV} environment variable"
    )]
    EncryptedKey { path: PathBuf },
    #[error("cannot decrypt {path} with the passphrase given (from {PASSPHRASE_ENV}): {why}")]
    Passphrase { path: PathBuf, why: String },
    #[error("ssh-agent at {socket}: {why}")]
    Agent { socket: PathBuf, why: String },
    #[error("ssh-agent at {socket} holds no key that can sign orders (add one with `ssh-add`)")]
    NoAgentKey { socket: PathBuf },
    #[error("ssh-agent at {socket} does not hold the key {fingerprint}")]
    AgentKeyMissing {
        socket: PathBuf,
        fingerprint: String,
    },
    #[error(transparent)]
    Sign(#[from] sign::SignError),
    #[error(
        "{path} already exists; refusing to overwrite a key (choose another --out or remove it)"
    )]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Something that can produce SSHSIG signatures over orders.
pub struct Signer {
    source: SignerSource,
}

enum SignerSource {
    Key(Box<PrivateKey>),
    /// The agent is reconnected for every signature: a signer may outlive a connection, and
    /// signing is rare (one per host per rollout).
    Agent {
        socket: PathBuf,
        key: PublicKey,
    },
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via = match &self.source {
            SignerSource::Key(_) => "key file".to_string(),
            SignerSource::Agent { socket, .. } => format!("ssh-agent {}", socket.display()),
        };
        write!(f, "Signer({via}, {})", self.fingerprint())
    }
}

impl Signer {
    /// Loads an OpenSSH private key. An encrypted key is decrypted with the passphrase in
    /// [`PASSPHRASE_ENV`]; without it the error tells the user what to do.
    pub fn from_key_file(path: &Path) -> Result<Signer, SignError> {
        let passphrase = std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty());
        Self::from_key_file_with_passphrase(path, passphrase.as_deref())
    }

    /// [`Signer::from_key_file`] with the passphrase given directly instead of from the
    /// environment (`None`: an encrypted key is an error).
    pub fn from_key_file_with_passphrase(
        path: &Path,
        passphrase: Option<&str>,
    ) -> Result<Signer, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Io {
            path: path.to_owned(),
            source,
        })?;
        let format_err = |why: String| SignError::KeyFormat {
            path: path.to_owned(),
            why,
        };
        if !text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
            return Err(format_err(if text.contains("PRIVATE KEY-----") {
                "it is in the old PEM format; convert it with `ssh-keygen -p -f KEY` (which rewrites it as \
                 OpenSSH)"
                    .into()
            } else {
                "no `-----BEGIN OPENSSH PRIVATE KEY-----` block (is this the .pub file?)".into()
            }));
        }
        let mut key = PrivateKey::from_openssh(&text).map_err(|e| format_err(e.to_string()))?;
        if key.is_encrypted() {
            let passphrase = passphrase.ok_or_else(|| SignError::EncryptedKey {
                path: path.to_owned(),
            })?;
            key = key
                .decrypt(passphrase.as_bytes())
                .map_err(|e| SignError::Passphrase {
                    path: path.to_owned(),
                    why: match e {
                        ssh_key::Error::Crypto => "wrong passphrase".into(),
                        other => other.to_string(),
                    },
                })?;
        }
        sign::check_algorithm(key.public_key()).map_err(format_err)?;
        Ok(Signer {
            source: SignerSource::Key(Box::new(key)),
        })
    }

    /// Uses a key held by the ssh-agent listening on `socket`: the one matching `want`, else
    /// the first key that can sign orders.
    pub async fn from_agent(socket: &Path, want: Option<&PublicKey>) -> Result<Signer, SignError> {
        let agent_err = |why: String| SignError::Agent {
            socket: socket.to_owned(),
            why,
        };
        let mut agent = SshAgent::connect(socket)
            .await
            .map_err(|e| agent_err(format!("cannot connect: {e}")))?;
        let keys = agent
            .public_keys()
            .await
            .map_err(|e| agent_err(format!("cannot list keys: {e}")))?;
        let key = match want {
            Some(want) => keys
                .into_iter()
                .find(|k| k.key_data() == want.key_data())
                .ok_or_else(|| SignError::AgentKeyMissing {
                    socket: socket.to_owned(),
                    fingerprint: sign::fingerprint(want),
                })?,
            None => keys
                .into_iter()
                .find(|k| sign::check_algorithm(k).is_ok())
                .ok_or_else(|| SignError::NoAgentKey {
                    socket: socket.to_owned(),
                })?,
        };
        sign::check_algorithm(&key).map_err(agent_err)?;
        Ok(Signer {
            source: SignerSource::Agent {
                socket: socket.to_owned(),
                key,
            },
        })
    }

    /// The ssh-agent socket named by `SSH_AUTH_SOCK`, if set.
    pub fn agent_socket_from_env() -> Option<PathBuf> {
        std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }

    pub fn public_key(&self) -> &PublicKey {
        match &self.source {
            SignerSource::Key(k) => k.public_key(),
            SignerSource::Agent { key, .. } => key,
        }
    }

    /// `SHA256:…` of the signing key.
    pub fn fingerprint(&self) -> String {
        sign::fingerprint(self.public_key())
    }

    /// An armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`) over exactly `payload`.
    pub async fn sign(&self, payload: &[u8]) -> Result<String, SignError> {
        self.sign_in(sign::NAMESPACE, payload).await
    }

    /// [`Signer::sign`] in another SSHSIG namespace (approvals: `proto::approval::NAMESPACE`).
    pub async fn sign_in(&self, namespace: &str, payload: &[u8]) -> Result<String, SignError> {
        let (socket, key) = match &self.source {
            SignerSource::Key(key) => return Ok(sign::sign_in(namespace, key, payload)?),
            SignerSource::Agent { socket, key } => (socket, key),
        };
        let agent_err = |why: String| SignError::Agent {
            socket: socket.to_owned(),
            why,
        };
        let data = sign::signed_data_in(namespace, payload)?;
        let mut agent = SshAgent::connect(socket)
            .await
            .map_err(|e| agent_err(format!("cannot connect: {e}")))?;
        let raw = agent
            .sign(key, &data)
            .await
            .map_err(|e| agent_err(format!("refused to sign: {e}")))?;
        sign::armor_in(namespace, key, raw, payload).map_err(|e| match e {
            sign::SignError::DoesNotVerify(why) => {
                agent_err(format!("returned a signature that does not verify: {why}"))
            }
            other => other.into(),
        })
    }

    /// Serializes `order` and signs those exact bytes.
    pub async fn sign_order(&self, order: &Order) -> Result<SignedOrder, SignError> {
        let payload = sign::order_payload(order)?;
        let signature = self.sign(payload.as_bytes()).await?;
        Ok(SignedOrder { payload, signature })
    }
}

/// What [`generate_key_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// The line to append to each host's allowed_signers.
    pub allowed_signers_line: String,
}

/// Writes a new ed25519 key pair in OpenSSH format: `out` (mode 0600) and `out.pub`.
/// Refuses to overwrite either file. `comment` is the key's comment and, when it has no
/// spaces, quotes or commas, the principal of the allowed_signers line.
pub fn generate_key_files(out: &Path, comment: &str) -> Result<GeneratedKey, SignError> {
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    for path in [out, public_path.as_path()] {
        if path.symlink_metadata().is_ok() {
            return Err(SignError::Exists {
                path: path.to_owned(),
            });
        }
    }
    let mut seed = [0u8; 32];
    // ssh-key is built without its getrandom feature; the kernel's CSPRNG is what getrandom
    // would read anyway.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| SignError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
    let key = sign::ed25519_key(&seed, comment);
    seed.fill(0);
    let private_text = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| sign::SignError::Sign(e.to_string()))?;
    let public_text = key
        .public_key()
        .to_openssh()
        .map_err(|e| sign::SignError::Sign(e.to_string()))?;

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SignError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_new(out, private_text.as_bytes(), 0o600)?;
    write_new(&public_path, format!("{public_text}\n").as_bytes(), 0o644)?;

    Ok(GeneratedKey {
        private_path: out.to_owned(),
        public_path,
        allowed_signers_line: allowed_signers_line(key.public_key())?,
    })
}

/// The allowed_signers line of `key`: its comment is the principal (who holds the key) when it
/// can be one (no spaces, commas or quotes), else `deployctl`.
pub fn allowed_signers_line(key: &PublicKey) -> Result<String, SignError> {
    let comment: &str = key.comment().as_ref();
    let principal = if !comment.is_empty()
        && !comment.contains(|c: char| c.is_whitespace() || c == ',' || c == '"')
    {
        comment
    } else {
        "deployctl"
    };
    Ok(sign::allowed_signers_line(principal, key)?)
}

/// Creates `path` (never replacing a file: a key is not something to overwrite by accident).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| SignError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                SignError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write_err(e)
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(write_err)
}
