//! Interop with the real OpenSSH tools: signatures made by [`Signer`] (key files, `ssh-agent`)
//! verify with `ssh-keygen -Y verify`, signatures made by `ssh-keygen -Y sign` pass
//! `proto::sign::verify`, and the key files `deployctl keys generate` writes are ones
//! `ssh-keygen` reads. Here because the controller is the crate that reads key files and talks
//! to ssh-agent; what an agent does with a verified payload is proto's tests' business, so these
//! work on payload bytes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployctl::signer::{PASSPHRASE_ENV, SignError, Signer, generate_key_files};
use proto::sign::{AllowedSigners, NAMESPACE, VerifyError, verify};
use tempfile::TempDir;

const PRINCIPAL: &str = "ci@acme";
/// What is signed: any bytes (an order's payload is JSON, but the signature covers bytes).
const PAYLOAD: &[u8] = br#"{"order_id":"01JTESTORDER","env":"staging","note":"signed bytes"}"#;

/// Fails loudly, with the fix, when a tool the tests need is missing.
fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; install it with: sudo apt-get install -y openssh-client"
    );
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ssh-keygen -t <kind>` without a passphrase; returns the private key path.
fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    need("ssh-keygen");
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(args));
    path
}

/// An allowed_signers line admitting `private`'s key for deploy orders.
fn allowed_line(private: &Path) -> String {
    let public = std::fs::read_to_string(format!("{}.pub", private.display())).unwrap();
    format!("{PRINCIPAL} namespaces=\"{NAMESPACE}\" {}", public.trim())
}

/// `ssh-keygen -Y sign` over `payload`; returns the armored signature.
fn ssh_keygen_sign(dir: &Path, key: &Path, namespace: &str, payload: &[u8]) -> String {
    let file = dir.join(format!("payload-{}", proto::order::new_id()));
    std::fs::write(&file, payload).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(&file));
    std::fs::read_to_string(format!("{}.sig", file.display())).unwrap()
}

/// `ssh-keygen -Y verify`; returns whether OpenSSH accepts the signature.
fn ssh_keygen_verify(
    dir: &Path,
    allowed_signers: &str,
    principal: &str,
    payload: &[u8],
    sig: &str,
) -> bool {
    let id = proto::order::new_id();
    let (signers, sig_file) = (
        dir.join(format!("allowed-{id}")),
        dir.join(format!("sig-{id}")),
    );
    std::fs::write(&signers, allowed_signers).unwrap();
    std::fs::write(&sig_file, sig).unwrap();
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", NAMESPACE, "-I", principal, "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(&sig_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(payload).unwrap();
    }
    child.wait().unwrap().success()
}

/// `signature` over [`PAYLOAD`] passes both verifiers for the key of `line`, and a tampered
/// payload passes neither.
fn verifies_everywhere(dir: &Path, line: &str, principal: &str, signature: &str) {
    let signers = AllowedSigners::parse(line, "as").unwrap();
    let verified = verify(PAYLOAD, signature, &signers).unwrap();
    assert_eq!(verified.principal, principal);
    assert!(
        ssh_keygen_verify(dir, line, principal, PAYLOAD, signature),
        "ssh-keygen -Y verify refused our signature for {line}"
    );
    let tampered = String::from_utf8_lossy(PAYLOAD).replace("staging", "stagimg");
    assert!(verify(tampered.as_bytes(), signature, &signers).is_err());
    assert!(!ssh_keygen_verify(
        dir,
        line,
        principal,
        tampered.as_bytes(),
        signature
    ));
}

const KEY_KINDS: [(&str, &[&str]); 3] = [
    ("ed", &["-t", "ed25519"]),
    ("ec", &["-t", "ecdsa", "-b", "256"]),
    ("rsa", &["-t", "rsa", "-b", "2048"]),
];

#[tokio::test]
async fn key_file_signatures_verify_with_ssh_keygen() {
    let dir = TempDir::new().unwrap();
    for (name, args) in KEY_KINDS {
        let key = keygen(dir.path(), name, args);
        let signature = Signer::from_key_file(&key)
            .unwrap()
            .sign(PAYLOAD)
            .await
            .unwrap();
        assert!(signature.starts_with("-----BEGIN SSH SIGNATURE-----"));
        verifies_everywhere(dir.path(), &allowed_line(&key), PRINCIPAL, &signature);
    }
}

#[test]
fn ssh_keygen_signatures_verify() {
    let dir = TempDir::new().unwrap();
    for (name, args) in KEY_KINDS {
        let key = keygen(dir.path(), name, args);
        let signature = ssh_keygen_sign(dir.path(), &key, NAMESPACE, PAYLOAD);
        let signers = AllowedSigners::parse(&allowed_line(&key), "as").unwrap();
        let verified =
            verify(PAYLOAD, &signature, &signers).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verified.principal, PRINCIPAL);
    }
}

#[test]
fn ssh_keygen_signature_for_another_namespace_is_a_bad_signature() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "k", &["-t", "ed25519"]);
    let signature = ssh_keygen_sign(dir.path(), &key, "git", PAYLOAD);
    let signers = AllowedSigners::parse(&allowed_line(&key), "as").unwrap();
    match verify(PAYLOAD, &signature, &signers) {
        Err(VerifyError::BadSignature(why)) => assert!(why.contains("\"git\""), "{why}"),
        other => panic!("expected a bad signature, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_keys_interoperate_and_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("keys/deployctl");
    let generated = generate_key_files(&out, "alice@laptop").unwrap();
    assert_eq!(generated.private_path, out);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let line = &generated.allowed_signers_line;
    assert!(
        line.starts_with("alice@laptop namespaces=\"deployctl-order\" ssh-ed25519 AAAA"),
        "{line}"
    );

    // ssh-keygen reads our private key and derives the same public key.
    need("ssh-keygen");
    let derived = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&out)).stdout;
    let ours = std::fs::read_to_string(&generated.public_path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&derived).split_whitespace().nth(1),
        ours.split_whitespace().nth(1)
    );

    // The printed line is a working allowed_signers file for both verifiers.
    let signature = Signer::from_key_file(&out)
        .unwrap()
        .sign(PAYLOAD)
        .await
        .unwrap();
    verifies_everywhere(dir.path(), line, "alice@laptop", &signature);

    assert!(matches!(
        generate_key_files(&out, "again"),
        Err(SignError::Exists { .. })
    ));
    std::fs::remove_file(&out).unwrap();
    assert!(
        matches!(generate_key_files(&out, "again"), Err(SignError::Exists { path }) if path == generated.public_path)
    );
}

#[tokio::test]
async fn encrypted_key_needs_a_passphrase() {
    let dir = TempDir::new().unwrap();
    let key = dir.path().join("enc");
    need("ssh-keygen");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "s3cret", "-C", "enc", "-f"])
        .arg(&key));
    match Signer::from_key_file_with_passphrase(&key, None) {
        Err(e @ SignError::EncryptedKey { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("ssh-add") && msg.contains(PASSPHRASE_ENV),
                "{msg}"
            );
        }
        other => panic!("expected EncryptedKey, got {other:?}"),
    }
    match Signer::from_key_file_with_passphrase(&key, Some("wrong")) {
        Err(e @ SignError::Passphrase { .. }) => {
            assert!(e.to_string().contains("wrong passphrase"), "{e}")
        }
        other => panic!("expected Passphrase, got {other:?}"),
    }
    let signer = Signer::from_key_file_with_passphrase(&key, Some("s3cret")).unwrap();
    let signature = signer.sign(PAYLOAD).await.unwrap();
    verifies_everywhere(dir.path(), &allowed_line(&key), PRINCIPAL, &signature);
}

#[test]
fn key_file_errors_say_what_is_wrong() {
    let dir = TempDir::new().unwrap();
    let key = keygen(dir.path(), "k", &["-t", "ed25519"]);
    let msg = Signer::from_key_file(&PathBuf::from(format!("{}.pub", key.display())))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(".pub"), "{msg}");
    let pem = keygen(dir.path(), "pem", &["-t", "ecdsa", "-m", "PEM"]);
    let msg = Signer::from_key_file(&pem).unwrap_err().to_string();
    assert!(msg.contains("old PEM format"), "{msg}");
    assert!(matches!(
        Signer::from_key_file(&dir.path().join("absent")),
        Err(SignError::Io { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// ssh-agent

/// A private `ssh-agent` on a socket in a temp dir, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        need("ssh-agent");
        need("ssh-add");
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start ssh-agent");
        let agent = Agent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket file appears at bind(), before listen(): wait until it accepts connections.
        while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not listen on {}",
                agent.socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    fn add(&self, key: &Path) {
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn signing_through_a_real_ssh_agent_verifies() {
    let dir = TempDir::new().unwrap();
    let ed = keygen(dir.path(), "ed", &["-t", "ed25519"]);
    let rsa = keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048"]);
    let agent = Agent::start(dir.path());

    match Signer::from_agent(&agent.socket, None).await {
        Err(SignError::NoAgentKey { .. }) => {}
        other => panic!("an empty agent should give NoAgentKey, got {other:?}"),
    }
    agent.add(&ed);
    agent.add(&rsa);

    // First suitable key.
    let signer = Signer::from_agent(&agent.socket, None).await.unwrap();
    let signature = signer.sign(PAYLOAD).await.unwrap();
    verifies_everywhere(dir.path(), &allowed_line(&ed), PRINCIPAL, &signature);

    // A chosen key, RSA: the agent must be asked for rsa-sha2-512.
    let rsa_pub = Signer::from_key_file(&rsa).unwrap().public_key().clone();
    let signer = Signer::from_agent(&agent.socket, Some(&rsa_pub))
        .await
        .unwrap();
    assert_eq!(signer.public_key().key_data(), rsa_pub.key_data());
    let signature = signer.sign(PAYLOAD).await.unwrap();
    verifies_everywhere(dir.path(), &allowed_line(&rsa), PRINCIPAL, &signature);

    let stranger = keygen(dir.path(), "stranger", &["-t", "ed25519"]);
    let stranger_pub = Signer::from_key_file(&stranger)
        .unwrap()
        .public_key()
        .clone();
    assert!(matches!(
        Signer::from_agent(&agent.socket, Some(&stranger_pub)).await,
        Err(SignError::AgentKeyMissing { .. })
    ));
    assert!(matches!(
        Signer::from_agent(&dir.path().join("nope.sock"), None).await,
        Err(SignError::Agent { .. })
    ));
}
