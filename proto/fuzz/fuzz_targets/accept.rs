//! The acceptance check, pure since it no longer touches the replay store: what a peer's
//! `submit` reaches. Odd first byte: the rest is a signed order as the wire carries it (almost
//! always refused at the signature). Even first byte: the rest is a payload signed by a key the
//! policy trusts, so arbitrary bytes get past the signature into the strict JSON parser and
//! every check after it. Any panic is a bug.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proto::accept::{AcceptPolicy, accept};
use proto::codec::decode;
use proto::policy::{FileKind, FileLook, HostFiles};
use proto::sign::{AllowedSigners, PrivateKey};
use proto::time::Timestamp;
use proto::wire::SignedOrder;

/// Every path is a proper file where it was asked for, so orders that name files get past
/// the file checks into the rest of the policy.
struct TrustedFiles;

impl HostFiles for TrustedFiles {
    fn look(&self, path: &str) -> FileLook {
        FileLook {
            resolved: path.to_string(),
            kind: FileKind::File,
            owner_trusted: true,
            mode: 0o600,
        }
    }
}

struct Fixture {
    key: PrivateKey,
    policy: AcceptPolicy,
    seen: BTreeSet<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = proto::sign::ed25519_key(&[9; 32], "fuzz");
        let line = proto::sign::allowed_signers_line("fuzz", key.public_key()).unwrap();
        let signers = AllowedSigners::parse(&line, "fuzz").unwrap();
        let policy = AcceptPolicy::new(
            "web-1",
            "staging",
            signers,
            vec!["127.0.0.1:5000/acme/*".into(), "registry.example.com/**".into()],
        );
        let mut policy = policy;
        policy.host_policy.volumes = vec!["/srv".into()];
        policy.host_policy.files = vec!["/etc/acme".into()];
        let seen = BTreeSet::from(["01JSEENSEENSEENSEENSEENSEE".to_string()]);
        Fixture { key, policy, seen }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let signed = if mode & 1 == 1 {
        match decode::<SignedOrder>(rest) {
            Ok(signed) => signed,
            Err(_) => return,
        }
    } else {
        let payload = String::from_utf8_lossy(rest).into_owned();
        let signature = proto::sign::sign(&f.key, payload.as_bytes()).expect("sign");
        SignedOrder { payload, signature }
    };
    // 2026-01-01T00:00:00Z: orders in the seed corpus are valid then.
    let now = Timestamp::from_unix_secs(1_767_225_600);
    if let Ok(accepted) = accept(&signed, &f.policy, now, &f.seen, &TrustedFiles) {
        // What passed must be what was signed, for this policy, and not seen before.
        assert_eq!(accepted.order.host, "web-1");
        assert_eq!(accepted.order.env, "staging");
        assert!(!f.seen.contains(&accepted.order.order_id));
        assert!(accepted.remember_until >= accepted.order.not_after);
    }
});
