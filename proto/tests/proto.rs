//! Integration tests for order signing, acceptance and the wire codec. They run on keys in
//! memory and need no external tool; interop with the real OpenSSH tools (`ssh-keygen -Y
//! sign/verify`, `ssh-agent`) is tested with the controller's signer, in
//! `controller/tests/openssh.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proto::accept::{AcceptPolicy, DEFAULT_MAX_SKEW, Rejection, accept, repository_matches};
use proto::codec::{self, CodecError, FrameBuffer, MAX_FRAME};
use proto::order::{ImageRef, MigrationSpec, Order, ServiceSpec};
use proto::policy::EmptyHost;
use proto::sign::{
    AllowedSigners, AllowedSignersError, NAMESPACE, PrivateKey, VerifyError, sign_order, verify,
    verify_at,
};
use proto::time::Timestamp;
use proto::wire::{self, RefusalKind, Reply, Request, SignedOrder};

// ---------------------------------------------------------------------------------------------
// fixtures

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const REPO: &str = "127.0.0.1:5000/acme/web";
const ENV: &str = "staging";
const HOST: &str = "web-1";
const PRINCIPAL: &str = "ci@acme";
/// A fixed "now" so validity windows are exact; 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

fn now() -> Timestamp {
    Timestamp::from_unix_secs(NOW)
}

fn order_at(issued_at: Timestamp) -> Order {
    let mut services = BTreeMap::new();
    services.insert(
        "web".to_string(),
        serde_json::from_str::<ServiceSpec>(r#"{"ports":["8080:8080"]}"#).unwrap(),
    );
    Order {
        order_id: proto::order::new_id(),
        rollout_id: proto::order::new_id(),
        env: ENV.into(),
        host: HOST.into(),
        host_key: None,
        issued_at,
        not_after: issued_at.plus(proto::order::DEFAULT_VALIDITY),
        issued_by: "tester@laptop".into(),
        action: proto::Action::Deploy,
        image: ImageRef::new(REPO, DIGEST).unwrap(),
        images: Default::default(),
        migrate_image: None,
        revision: None,
        reference: "v1".into(),
        refs: Default::default(),
        tags: Default::default(),
        run_migration: true,
        rerun_migration: false,
        app: "acme".into(),
        services,
        migrate: Some(MigrationSpec {
            command: vec!["/app".into(), "migrate".into()],
            service: "web".into(),
            timeout: Duration::from_secs(60),
            image: None,
        }),
        exec: None,
        maintenance: None,
        proposal: None,
        override_freeze: None,
    }
}

fn order() -> Order {
    order_at(now())
}

fn policy(allowed: AllowedSigners) -> AcceptPolicy {
    AcceptPolicy::new(HOST, ENV, allowed, vec!["127.0.0.1:5000/acme/*".into()])
}

/// A fixed ed25519 key per `n`: the tests need no secret, only distinct keys.
fn test_key(n: u8) -> PrivateKey {
    proto::sign::ed25519_key(&[n; 32], &format!("key-{n}"))
}

fn public_text(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap()
}

/// An allowed_signers line admitting `key` for deploy orders.
fn allowed_line(key: &PrivateKey) -> String {
    format!(
        "{PRINCIPAL} namespaces=\"{NAMESPACE}\" {}",
        public_text(key)
    )
}

fn allowed(key: &PrivateKey) -> AllowedSigners {
    AllowedSigners::parse(&allowed_line(key), "test").unwrap()
}

fn sign_with_key(key: &PrivateKey, order: &Order) -> SignedOrder {
    sign_order(key, order).unwrap()
}

/// No order accepted before.
fn none_seen() -> BTreeSet<String> {
    BTreeSet::new()
}

fn refusal(signed: &SignedOrder, policy: &AcceptPolicy, at: Timestamp) -> Rejection {
    accept(signed, policy, at, &none_seen(), &EmptyHost).expect_err("order should be refused")
}

// ---------------------------------------------------------------------------------------------
// round trip and tampering

#[test]
fn signature_round_trips_through_accept() {
    let key = test_key(1);
    let order = order();
    let signed = sign_with_key(&key, &order);
    assert!(
        signed
            .signature
            .starts_with("-----BEGIN SSH SIGNATURE-----")
    );

    let accepted = accept(
        &signed,
        &policy(allowed(&key)),
        now(),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    assert_eq!(accepted.order, order);
    assert_eq!(accepted.signer.principal, PRINCIPAL);
    assert_eq!(
        accepted.signer.fingerprint,
        proto::sign::fingerprint(key.public_key())
    );
    assert!(accepted.signer.fingerprint.starts_with("SHA256:"));
}

#[test]
fn flipping_any_byte_of_payload_or_signature_is_refused() {
    let key = test_key(1);
    let signers = allowed(&key);
    let signed = sign_with_key(&key, &order());
    verify(signed.payload.as_bytes(), &signed.signature, &signers).unwrap();

    let mut payload = signed.payload.clone().into_bytes();
    for i in 0..payload.len() {
        payload[i] ^= 0x01;
        let err =
            verify(&payload, &signed.signature, &signers).expect_err("tampered payload verified");
        assert!(
            matches!(err, VerifyError::BadSignature(_)),
            "payload byte {i}: {err}"
        );
        payload[i] ^= 0x01;
    }
    let mut sig = signed.signature.clone().into_bytes();
    for i in 0..sig.len() {
        sig[i] ^= 0x01;
        let text = String::from_utf8(sig.clone()).unwrap();
        let err = match verify(signed.payload.as_bytes(), &text, &signers) {
            Ok(v) => panic!(
                "signature with byte {i} of {} flipped verified: {v:?}",
                sig.len()
            ),
            Err(e) => e,
        };
        assert!(
            matches!(err, VerifyError::BadSignature(_)),
            "signature byte {i} ({:?}): {err}",
            sig[i] as char
        );
        sig[i] ^= 0x01;
    }
}

// ---------------------------------------------------------------------------------------------
// one test per refusal kind

#[test]
fn refused_bad_signature() {
    let key = test_key(1);
    let mut signed = sign_with_key(&key, &order());
    signed.payload = signed.payload.replace("\"v1\"", "\"v2\"");
    let r = refusal(&signed, &policy(allowed(&key)), now());
    assert_eq!(r.kind, RefusalKind::BadSignature, "{r}");
    assert!(r.message.contains("tampered"), "{r}");
}

#[test]
fn refused_unknown_signer() {
    let (key, other) = (test_key(1), test_key(2));
    let signed = sign_with_key(&other, &order());
    let r = refusal(&signed, &policy(allowed(&key)), now());
    assert_eq!(r.kind, RefusalKind::UnknownSigner, "{r}");
    let fp = proto::sign::fingerprint(other.public_key());
    assert!(
        r.message.contains(&fp) && r.message.contains("not in allowed_signers"),
        "{r}"
    );
}

#[test]
fn refused_unknown_signer_when_key_is_allowed_only_for_other_namespaces() {
    let key = test_key(1);
    let signers = AllowedSigners::parse(
        &format!("{PRINCIPAL} namespaces=\"git,file\" {}", public_text(&key)),
        "as",
    )
    .unwrap();
    let r = refusal(&sign_with_key(&key, &order()), &policy(signers), now());
    assert_eq!(r.kind, RefusalKind::UnknownSigner, "{r}");
    assert!(
        r.message.contains("as:1") && r.message.contains("git,file"),
        "{r}"
    );
}

#[test]
fn refused_unknown_signer_outside_valid_window() {
    let key = test_key(1);
    let pubkey = public_text(&key);
    let signed = sign_with_key(&key, &order());
    let before = AllowedSigners::parse(
        &format!("{PRINCIPAL} valid-before=\"20251231\" {pubkey}"),
        "as",
    )
    .unwrap();
    assert_eq!(
        refusal(&signed, &policy(before), now()).kind,
        RefusalKind::UnknownSigner
    );
    let after = AllowedSigners::parse(
        &format!("{PRINCIPAL} valid-after=\"20260102Z\" {pubkey}"),
        "as",
    )
    .unwrap();
    assert_eq!(
        refusal(&signed, &policy(after), now()).kind,
        RefusalKind::UnknownSigner
    );
    let inside = AllowedSigners::parse(
        &format!("{PRINCIPAL} valid-after=\"20250101\",valid-before=\"20270101\" {pubkey}"),
        "as",
    )
    .unwrap();
    accept(&signed, &policy(inside), now(), &none_seen(), &EmptyHost).unwrap();
}

#[test]
fn refused_env_mismatch() {
    let key = test_key(1);
    let mut o = order();
    o.env = "prod".into();
    let r = refusal(&sign_with_key(&key, &o), &policy(allowed(&key)), now());
    assert_eq!(r.kind, RefusalKind::EnvMismatch);
    assert!(
        r.message.contains("\"prod\"") && r.message.contains("\"staging\""),
        "{r}"
    );
}

/// Names become container names, compose arguments and file names on the host: the agent
/// refuses unusable ones however the order was made.
#[test]
fn refused_names_unusable_on_a_host() {
    let key = test_key(1);
    for (app, service) in [
        ("../etc", "web"),
        ("acme", "--rm"),
        ("acme", "a/b"),
        ("", "web"),
    ] {
        let mut o = order();
        o.app = app.into();
        let spec = o.services.values().next().cloned().unwrap();
        o.services = [(service.to_string(), spec)].into_iter().collect();
        if let Some(m) = o.migrate.as_mut() {
            m.service = service.into();
        }
        let r = refusal(&sign_with_key(&key, &o), &policy(allowed(&key)), now());
        assert_eq!(r.kind, RefusalKind::Malformed, "{app}/{service}: {r}");
        assert!(r.message.contains("not a valid name"), "{r}");
    }
}

#[test]
fn refused_host_mismatch() {
    let key = test_key(1);
    let mut o = order();
    o.host = "web-2".into();
    let r = refusal(&sign_with_key(&key, &o), &policy(allowed(&key)), now());
    assert_eq!(r.kind, RefusalKind::HostMismatch);
    assert!(
        r.message.contains("\"web-2\"") && r.message.contains("\"web-1\""),
        "{r}"
    );
}

#[test]
fn refused_expired_after_not_after_plus_skew() {
    let key = test_key(1);
    let o = order();
    let signed = sign_with_key(&key, &o);
    let p = policy(allowed(&key));
    // Within the skew: still accepted.
    accept(
        &signed,
        &p,
        o.not_after.plus(Duration::from_secs(59)),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    let r = refusal(&signed, &p, o.not_after.plus(Duration::from_secs(61)));
    assert_eq!(r.kind, RefusalKind::Expired);
    assert!(r.message.contains(&o.not_after.to_string()), "{r}");
}

#[test]
fn refused_not_yet_valid_beyond_skew() {
    let key = test_key(1);
    let p = policy(allowed(&key));
    let near = order_at(now().plus(Duration::from_secs(59)));
    accept(
        &sign_with_key(&key, &near),
        &p,
        now(),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    let far = order_at(now().plus(Duration::from_secs(61)));
    let r = refusal(&sign_with_key(&key, &far), &p, now());
    assert_eq!(r.kind, RefusalKind::NotYetValid);
    assert!(
        r.message.contains(&far.issued_at.to_string()) && r.message.contains(&now().to_string()),
        "{r}"
    );
}

#[test]
fn refused_replayed() {
    let key = test_key(1);
    let signed = sign_with_key(&key, &order());
    let p = policy(allowed(&key));
    let accepted = accept(&signed, &p, now(), &none_seen(), &EmptyHost).unwrap();
    // accept only reads what was seen: remembering the id is the agent's step.
    let seen = BTreeSet::from([accepted.order.order_id.clone()]);
    let r = accept(&signed, &p, now(), &seen, &EmptyHost).unwrap_err();
    assert_eq!(r.kind, RefusalKind::Replayed);
    assert!(r.message.contains("already accepted once"), "{r}");
}

#[test]
fn an_accepted_id_is_to_be_remembered_until_it_would_expire_anyway() {
    let key = test_key(1);
    let o = order();
    let accepted = accept(
        &sign_with_key(&key, &o),
        &policy(allowed(&key)),
        now(),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    assert_eq!(accepted.remember_until, o.not_after.plus(DEFAULT_MAX_SKEW));
}

#[test]
fn an_order_valid_until_year_9999_is_remembered_until_then() {
    // not_after plus the skew was a time RFC 3339 cannot write: writing the id to the replay
    // store panicked the agent, for anyone holding a trusted key.
    let key = test_key(1);
    let mut o = order();
    o.not_after = Timestamp::parse("9999-12-31T23:59:59Z").unwrap();
    // A host whose policy admits any validity window, so the order gets that far.
    let mut p = policy(allowed(&key));
    p.host_policy.max_validity = Duration::MAX;
    let accepted = accept(
        &sign_with_key(&key, &o),
        &p,
        now(),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&accepted.remember_until).unwrap(),
        "\"9999-12-31T23:59:59Z\""
    );
    assert!(accepted.remember_until >= o.not_after);
}

#[test]
fn an_unrecorded_order_is_an_internal_refusal_naming_it() {
    let r = Rejection::not_recorded("o1", &"disk full");
    assert_eq!(r.kind, RefusalKind::Internal);
    assert_eq!(
        r.message,
        "cannot record order o1 against replay, so it is not applied: disk full"
    );
}

#[test]
fn refused_image_not_allowed() {
    let key = test_key(1);
    let mut o = order();
    o.image = ImageRef::new("127.0.0.1:5000/evil/web", DIGEST).unwrap();
    let r = refusal(&sign_with_key(&key, &o), &policy(allowed(&key)), now());
    assert_eq!(r.kind, RefusalKind::ImageNotAllowed);
    assert!(
        r.message.contains("127.0.0.1:5000/evil/web")
            && r.message.contains("127.0.0.1:5000/acme/*"),
        "{r}"
    );
}

#[test]
fn refused_malformed_payload_even_when_signed() {
    let key = test_key(1);
    let p = policy(allowed(&key));
    let good = serde_json::to_value(order()).unwrap();
    let mut unknown_field = good.clone();
    unknown_field["extra"] = serde_json::json!(1);
    let mut no_services = good.clone();
    no_services["services"] = serde_json::json!({});
    let mut backwards = good.clone();
    backwards["not_after"] = good["issued_at"].clone();
    let payloads = [
        "not json".to_string(),
        "{}".to_string(),
        unknown_field.to_string(),
        no_services.to_string(),
        backwards.to_string(),
        format!("{good}{good}"),
    ];
    for payload in payloads {
        let signature = proto::sign::sign(&key, payload.as_bytes()).unwrap();
        let r = refusal(
            &SignedOrder {
                payload: payload.clone(),
                signature,
            },
            &p,
            now(),
        );
        assert_eq!(r.kind, RefusalKind::Malformed, "{payload}: {r}");
    }
}

#[test]
fn refused_oversized_before_anything_else() {
    let p = policy(AllowedSigners::default());
    let big = SignedOrder {
        payload: "x".repeat(p.max_payload + 1),
        signature: "garbage".into(),
    };
    assert_eq!(refusal(&big, &p, now()).kind, RefusalKind::Oversized);
    let big_sig = SignedOrder {
        payload: "{}".into(),
        signature: "x".repeat(1 << 20),
    };
    assert_eq!(refusal(&big_sig, &p, now()).kind, RefusalKind::Oversized);
}

#[test]
fn rejection_becomes_a_wire_refusal() {
    let r = refusal(
        &SignedOrder {
            payload: "{}".into(),
            signature: "nope".into(),
        },
        &policy(AllowedSigners::default()),
        now(),
    );
    let wire: wire::Refusal = r.clone().into();
    assert_eq!(
        (wire.kind, wire.message.as_str(), wire.holder),
        (r.kind, r.message.as_str(), None)
    );
}

// ---------------------------------------------------------------------------------------------
// acceptance of anything a trusted key signs (issue "A signing key is not root")
//
// A signing key lets its holder put any bytes in front of `accept` with a valid signature, so
// past the signature check nothing may assume a well-formed order: whatever was signed, the
// verdict is an order or a refusal that says why, never a panic, and an accepted order is one
// the agent can journal and remember.

/// JSON a broken or hostile signer might put in any field: odd timestamps and durations,
/// non-ASCII and control characters, names a host cannot use, extreme numbers.
fn odd_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let strings = one_of(vec![
        "9999-12-31T23:59:59Z".to_string(),
        "9999-12-31T23:59:59.999999999Z".into(),
        "1970-01-01T00:00:00Z".into(),
        "1969-12-31T23:59:59Z".into(),
        "0000-01-01T00:00:00Z".into(),
        "2026-02-30T00:00:00Z".into(),
        "2026-01-01T00:00:60Z".into(),
        "2026-01-01T00:00:00+14:00".into(),
        "2026-01-01 00:00:00".into(),
        "+275760-09-13T00:00:00Z".into(),
        "18446744073709551615s".into(),
        "99999999999999999999999h".into(),
        "0s".into(),
        "1ns".into(),
        "wéb".into(),
        "🦀".into(),
        "web\u{0}".into(),
        "\u{1b}[2J".into(),
        "../../etc/passwd".into(),
        "-rf".into(),
        String::new(),
        " ".into(),
        "a".repeat(65),
        "sha256:éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé".into(),
        format!("{REPO}@{DIGEST}"),
        format!("{REPO}:latest"),
        "deploy".into(),
        "rollback".into(),
        "compose".into(),
        "start-first".into(),
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        any::<String>().prop_map(Value::String),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}|\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Numbers JSON can spell but no Rust integer or float holds.
const RAW_NUMBERS: &[&str] = &[
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1e400",
    "-1e400",
    "1.7976931348623157e309",
    "-0",
    "0.0000000000000000000000000000000000000000000000001",
];

/// One change to a valid order's JSON, at the `n`-th of its object keys (in document order).
#[derive(Debug, Clone)]
enum Mutation {
    Replace(proptest::sample::Index, serde_json::Value),
    /// A number no Rust type holds (spliced in as text after serialization).
    RawNumber(proptest::sample::Index, &'static str),
    Remove(proptest::sample::Index),
    /// The key itself renamed: a service called `🦀`, an unknown field.
    Rename(proptest::sample::Index, String),
    /// `issued_at` (false) or `not_after` (true) set to any text a timestamp parser might meet.
    Time(bool, String),
}

/// Timestamps at the edges: just before year 10000 (where a time plus the skew cannot be
/// written any more), anywhere RFC 3339 can write, and text that is almost one.
fn odd_timestamp() -> impl Strategy<Value = String> {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    prop_oneof![
        (0..120u64).prop_map(|back| Timestamp::from_unix_secs(LAST - back).to_string()),
        (0..=LAST).prop_map(|secs| Timestamp::from_unix_secs(secs).to_string()),
        (NOW - 600..NOW + 600).prop_map(|secs| Timestamp::from_unix_secs(secs).to_string()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        "\\PC{0,30}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<proptest::sample::Index>;
    prop_oneof![
        4 => (index(), odd_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (index(), one_of(RAW_NUMBERS.to_vec())).prop_map(|(i, n)| Mutation::RawNumber(i, n)),
        1 => index().prop_map(Mutation::Remove),
        1 => (index(), prop_oneof!["\\PC{0,12}", "[a-z_]{1,10}", Just("🦀".to_string())])
            .prop_map(|(i, k)| Mutation::Rename(i, k)),
        2 => (any::<bool>(), odd_timestamp()).prop_map(|(f, t)| Mutation::Time(f, t)),
    ]
}

/// Every object key of `v` as a path of keys, parents before children.
fn key_paths(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            prefix.push(k.clone());
            out.push(prefix.clone());
            key_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

/// The object holding the last key of `path`, if the earlier mutations left it there.
fn parent_of<'a>(
    v: &'a mut serde_json::Value,
    path: &[String],
) -> Option<&'a mut serde_json::Map<String, serde_json::Value>> {
    let (_, parents) = path.split_last()?;
    let mut at = v;
    for k in parents {
        at = at.as_object_mut()?.get_mut(k)?;
    }
    at.as_object_mut()
}

/// A valid order's JSON with `mutations` applied.
fn mutated_order(mutations: &[Mutation]) -> String {
    let mut v = serde_json::to_value(order()).unwrap();
    let mut raw = Vec::new();
    for (n, m) in mutations.iter().enumerate() {
        if let Mutation::Time(not_after, text) = m {
            let field = if *not_after { "not_after" } else { "issued_at" };
            v[field] = serde_json::Value::String(text.clone());
            continue;
        }
        let mut paths = Vec::new();
        key_paths(&v, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            break;
        }
        let (Mutation::Replace(i, _)
        | Mutation::RawNumber(i, _)
        | Mutation::Remove(i)
        | Mutation::Rename(i, _)) = m
        else {
            continue;
        };
        let path = &paths[i.index(paths.len())];
        let key = path.last().unwrap().clone();
        let Some(parent) = parent_of(&mut v, path) else {
            continue;
        };
        match m {
            Mutation::Replace(_, value) => {
                parent.insert(key, value.clone());
            }
            Mutation::RawNumber(_, number) => {
                let placeholder = format!("@raw-number-{n}@");
                parent.insert(key, serde_json::Value::String(placeholder.clone()));
                raw.push((format!("\"{placeholder}\""), *number));
            }
            Mutation::Remove(_) => {
                parent.remove(&key);
            }
            Mutation::Rename(_, new_key) => {
                if let Some(value) = parent.remove(&key) {
                    parent.insert(new_key.clone(), value);
                }
            }
            Mutation::Time(..) => {}
        }
    }
    let mut text = v.to_string();
    for (placeholder, number) in raw {
        text = text.replace(&placeholder, number);
    }
    text
}

/// What is signed: anything at all, any JSON, or an order a few fields away from valid.
fn signed_payload() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "\\PC{0,200}",
        1 => odd_json().prop_map(|v| v.to_string()),
        6 => proptest::collection::vec(mutation(), 0..4).prop_map(|m| mutated_order(&m)),
    ]
}

/// `-----BEGIN SSH SIGNATURE-----` armor around any bytes, 70 base64 characters a line as
/// OpenSSH writes it.
fn armor_bytes(blob: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
        lines.join("\n")
    )
}

/// The bytes inside an armored signature.
fn unarmor(armored: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = armored
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// How the payload's signature is made.
#[derive(Debug, Clone)]
enum SignedBy {
    /// The key the policy trusts, over exactly the payload.
    Trusted,
    /// A genuine signature by a key nobody listed.
    Stranger,
    /// Any text at all.
    Text(String),
    /// Any bytes in SSHSIG armor.
    Bytes(Vec<u8>),
    /// The trusted key's signature with its last bytes (the ed25519 signature proper) replaced.
    ForgedTail(Vec<u8>),
    /// The trusted key's signature with one byte of its blob overwritten, or cut short.
    Corrupted(proptest::sample::Index, Option<u8>),
}

fn signed_by() -> impl Strategy<Value = SignedBy> {
    prop_oneof![
        8 => Just(SignedBy::Trusted),
        1 => Just(SignedBy::Stranger),
        1 => any::<String>().prop_map(SignedBy::Text),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(SignedBy::Bytes),
        1 => proptest::collection::vec(any::<u8>(), 1..80).prop_map(SignedBy::ForgedTail),
        1 => (any::<proptest::sample::Index>(), proptest::option::of(any::<u8>()))
            .prop_map(|(i, b)| SignedBy::Corrupted(i, b)),
    ]
}

fn signature_for(by: &SignedBy, payload: &str, trusted: &PrivateKey) -> String {
    let genuine = || proto::sign::sign(trusted, payload.as_bytes()).unwrap();
    match by {
        SignedBy::Trusted => genuine(),
        SignedBy::Stranger => proto::sign::sign(&test_key(2), payload.as_bytes()).unwrap(),
        SignedBy::Text(text) => text.clone(),
        SignedBy::Bytes(bytes) => armor_bytes(bytes),
        SignedBy::ForgedTail(tail) => {
            let mut blob = unarmor(&genuine());
            let keep = blob.len().saturating_sub(tail.len());
            blob.truncate(keep);
            blob.extend_from_slice(tail);
            armor_bytes(&blob)
        }
        SignedBy::Corrupted(i, byte) => {
            let mut blob = unarmor(&genuine());
            let at = i.index(blob.len());
            match byte {
                Some(b) => blob[at] = *b,
                None => blob.truncate(at),
            }
            armor_bytes(&blob)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn whatever_a_trusted_key_signs_is_accepted_or_refused_with_a_reason(
        payload in signed_payload(),
        by in signed_by(),
    ) {
        let key = test_key(1);
        let p = policy(allowed(&key));
        let signed = SignedOrder {
            signature: signature_for(&by, &payload, &key),
            payload,
        };
        match accept(&signed, &p, now(), &none_seen(), &EmptyHost) {
            Ok(accepted) => {
                // What the agent does next with it: journal the order, remember its id until
                // `remember_until` (a JSON file), and log both.
                prop_assert!(serde_json::to_string(&accepted.order).is_ok());
                let until = serde_json::to_string(&accepted.remember_until);
                prop_assert!(until.is_ok(), "remember_until {:?}: {:?}", accepted.remember_until, until);
                prop_assert!(!accepted.remember_until.to_string().is_empty());
                prop_assert!(!accepted.order.not_after.to_string().is_empty());
            }
            Err(rejection) => prop_assert!(
                !rejection.message.trim().is_empty(),
                "a {:?} refusal without a message", rejection.kind
            ),
        }
    }
}

#[test]
fn the_mutation_harness_starts_from_an_order_that_is_accepted() {
    // Without this, every mutated order could be refused for a reason of the harness's own.
    let key = test_key(1);
    let payload = mutated_order(&[]);
    let signed = SignedOrder {
        signature: signature_for(&SignedBy::Trusted, &payload, &key),
        payload,
    };
    accept(
        &signed,
        &policy(allowed(&key)),
        now(),
        &none_seen(),
        &EmptyHost,
    )
    .unwrap();
    let forged = SignedOrder {
        signature: signature_for(&SignedBy::ForgedTail(vec![0; 64]), &signed.payload, &key),
        ..signed.clone()
    };
    assert_eq!(
        refusal(&forged, &policy(allowed(&key)), now()).kind,
        RefusalKind::BadSignature
    );
}

// ---------------------------------------------------------------------------------------------
// allowed_signers parsing

#[test]
fn allowed_signers_parsing_table() {
    let (a, b) = (test_key(1), test_key(2));
    let (ka, kb) = (public_text(&a), public_text(&b));
    let key_only = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let signed_a = sign_with_key(&a, &order());
    let signed_b = sign_with_key(&b, &order());

    // (text, principal expected for key a, for key b); None = refused as unknown signer.
    let ok_cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
        (format!("alice {ka}"), Some("alice"), None),
        (
            format!("# a comment\n\n   \nalice {ka}\n# end"),
            Some("alice"),
            None,
        ),
        (
            format!("alice,bob@example.com {}", key_only(&ka)),
            Some("alice,bob@example.com"),
            None,
        ),
        (format!("\"quoted\" {ka}"), Some("quoted"), None),
        (
            format!("alice namespaces=\"deployctl-order\" {ka}"),
            Some("alice"),
            None,
        ),
        (
            format!("alice NAMESPACES=\"git,deployctl-*\" {ka}"),
            Some("alice"),
            None,
        ),
        (
            format!("alice namespaces=\"git\" {ka}\nbob {kb}"),
            None,
            Some("bob"),
        ),
        (
            format!("alice namespaces=\"git\" {ka}\nalice2 {ka}"),
            Some("alice2"),
            None,
        ),
        (
            format!("ca cert-authority {ka}\nbob {kb}"),
            None,
            Some("bob"),
        ),
        (
            format!("alice namespaces=\"a b,deployctl-order\" {ka} some comment with spaces"),
            Some("alice"),
            None,
        ),
        ("".into(), None, None),
    ];
    for (text, want_a, want_b) in ok_cases {
        let signers =
            AllowedSigners::parse(&text, "as").unwrap_or_else(|e| panic!("{text:?}: {e}"));
        for (signed, want) in [(&signed_a, want_a), (&signed_b, want_b)] {
            let got = verify_at(
                signed.payload.as_bytes(),
                &signed.signature,
                &signers,
                now(),
            );
            match (want, got) {
                (Some(p), Ok(v)) => assert_eq!(v.principal, p, "{text:?}"),
                (None, Err(VerifyError::UnknownSigner { .. })) => {}
                (want, got) => panic!("{text:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }
    let ca = AllowedSigners::parse(&format!("ca cert-authority {ka}"), "as").unwrap();
    assert!(ca.is_empty());
    assert!(
        ca.notes()[0].contains("as:1") && ca.notes()[0].contains("cert-authority"),
        "{:?}",
        ca.notes()
    );

    let bad_cases = [
        ("alice".to_string(), 1, "expected options or a key"),
        (
            format!("# c\nalice {}", key_only(&ka).replace("AAAA", "!!!!")),
            2,
            "bad ssh-ed25519 key",
        ),
        ("\nalice ssh-ed25519".to_string(), 2, "no base64"),
        (format!("alice unknown-opt {ka}"), 1, "unsupported option"),
        (
            format!("alice namespaces=deployctl-order {ka}"),
            1,
            "must be quoted",
        ),
        (
            format!("alice namespaces=\"deployctl-order {ka}"),
            1,
            "unterminated quote",
        ),
        (
            format!("alice valid-after=\"tomorrow\" {ka}"),
            1,
            "bad time",
        ),
        (
            format!("alice ssh-rsa {}", key_only(&ka).split(' ').nth(1).unwrap()),
            1,
            "bad ssh-rsa key",
        ),
        (
            "alice ssh-ed25519-cert-v01@openssh.com AAAA".to_string(),
            1,
            "certificates",
        ),
        (
            format!("alice {ka}\n\nbob frobnicate {kb}"),
            3,
            "unsupported option",
        ),
    ];
    for (text, line, why) in bad_cases {
        match AllowedSigners::parse(&text, "/etc/deploy-agent/allowed_signers") {
            Err(e @ AllowedSignersError::Line { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("/etc/deploy-agent/allowed_signers:{line}: ")),
                    "{text:?}: {msg}"
                );
                assert!(msg.contains(why), "{text:?}: {msg}");
            }
            other => panic!("{text:?} should be refused, got {other:?}"),
        }
    }
    assert_eq!(
        AllowedSigners::parse(&format!("alice {ka}\n"), "as")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn image_patterns_match_within_segments() {
    assert!(repository_matches("127.0.0.1:5000/acme/*", REPO));
    assert!(!repository_matches(
        "127.0.0.1:5000/acme/*",
        "127.0.0.1:5000/acme/a/b"
    ));
    assert!(repository_matches(
        "127.0.0.1:5000/**",
        "127.0.0.1:5000/acme/a/b"
    ));
}

// ---------------------------------------------------------------------------------------------
// codec

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9 \n\"\\\\{}]{0,20}"]
}

fn ts() -> impl Strategy<Value = Timestamp> {
    (0u64..4_000_000_000).prop_map(Timestamp::from_unix_secs)
}

fn image() -> impl Strategy<Value = ImageRef> {
    ("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", "[0-9a-f]{64}")
        .prop_map(|(repo, hex)| ImageRef::new(&repo, &format!("sha256:{hex}")).unwrap())
}

fn one_of<T: Clone + std::fmt::Debug + 'static>(values: Vec<T>) -> impl Strategy<Value = T> {
    proptest::sample::select(values)
}

fn refusal_kind() -> impl Strategy<Value = RefusalKind> {
    use RefusalKind::*;
    one_of(vec![
        BadSignature,
        UnknownSigner,
        EnvMismatch,
        HostMismatch,
        Expired,
        NotYetValid,
        Replayed,
        ImageNotAllowed,
        PolicyDenied,
        NotRunning,
        RolloutInProgress,
        Malformed,
        Oversized,
        ProtocolVersion,
        Internal,
    ])
}

fn outcome_kind() -> impl Strategy<Value = wire::OutcomeKind> {
    use wire::OutcomeKind::*;
    one_of(vec![
        Succeeded,
        PullFailed,
        MigrationFailed,
        RolledBack,
        RollbackFailed,
        Failed,
    ])
}

fn lock_holder() -> impl Strategy<Value = wire::LockHolder> {
    (text(), text(), text(), text(), ts()).prop_map(
        |(order_id, rollout_id, signer, issued_by, since)| wire::LockHolder {
            order_id,
            rollout_id,
            signer,
            issued_by,
            since,
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), text()).prop_map(|(protocol, client)| Request::Hello { protocol, client }),
        (text(), text()).prop_map(|(payload, signature)| Request::Submit {
            order: SignedOrder { payload, signature }
        }),
        text().prop_map(|order_id| Request::Watch { order_id }),
        Just(Request::Status {}),
        any::<usize>().prop_map(|limit| Request::History { limit }),
        (proptest::option::of(text()), any::<usize>())
            .prop_map(|(service, lines)| Request::Logs { service, lines }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    use wire::*;
    let phase = one_of(vec![
        Phase::Accepted,
        Phase::Pull,
        Phase::Migrate,
        Phase::Switch,
        Phase::Health,
        Phase::Cleanup,
        Phase::Rollback,
        Phase::Recover,
        Phase::Exec,
        Phase::Done,
    ]);
    let event = (text(), ts(), phase, proptest::option::of(text()), text()).prop_map(
        |(order_id, at, phase, service, message)| JobEvent {
            order_id,
            at,
            phase,
            service,
            message,
        },
    );
    let failure = one_of(vec![
        FailureClass::ImageNotFound,
        FailureClass::RegistryUnauthorized,
        FailureClass::RegistryUnreachable,
        FailureClass::MigrationFailed,
        FailureClass::MigrationTimeout,
        FailureClass::ContainerExited,
        FailureClass::HealthDeadline,
        FailureClass::StartFailed,
        FailureClass::Engine,
        FailureClass::Interrupted,
        FailureClass::ExecTimeout,
    ]);
    let service_result = (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(digest, previous_digest, container_id)| ServiceResult {
            digest,
            previous_digest,
            container_id,
        });
    let outcome = (
        (
            text(),
            text(),
            outcome_kind(),
            proptest::option::of(failure),
            proptest::option::of(text()),
            any::<bool>(),
        ),
        (
            proptest::collection::vec(text(), 0..4),
            proptest::collection::btree_map(text(), service_result, 0..3),
            ts(),
            ts(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<i64>()),
        ),
    )
        .prop_map(
            |(
                (order_id, rollout_id, kind, failure, reason, changed),
                (log_tail, services, started_at, finished_at, rollback_ms, exit_code),
            )| Outcome {
                order_id,
                rollout_id,
                kind,
                failure,
                reason,
                changed,
                log_tail,
                services,
                started_at,
                finished_at,
                rollback_ms,
                exit_code,
            },
        );
    let health = one_of(vec![
        Health::Healthy,
        Health::Unhealthy,
        Health::Stopped,
        Health::Missing,
        Health::Unknown,
        Health::CrashLoop,
    ]);
    let reason = one_of(vec![
        HealthReason::OomKilled,
        HealthReason::Exited,
        HealthReason::ProbeFailed,
        HealthReason::Removed,
    ]);
    let service_status = (
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(image()),
            proptest::option::of(text()),
        ),
        (
            health,
            ts(),
            proptest::option::of(outcome_kind()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        (
            proptest::option::of(reason),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (app, service, container_id, image, reference),
                (health, since, last_outcome, last_order, previous_digest, maintenance),
                (reason, exit_code, probe_ms),
            )| {
                ServiceStatus {
                    app,
                    service,
                    container_id,
                    image,
                    reference,
                    health,
                    since,
                    last_outcome,
                    last_order,
                    previous_digest,
                    maintenance,
                    restarts: 0,
                    reason,
                    exit_code,
                    probe_ms,
                }
            },
        );
    let status = (
        (text(), text(), text(), any::<u64>()),
        proptest::collection::vec(service_status, 0..3),
        proptest::collection::vec(lock_holder(), 0..2),
    )
        .prop_map(
            |((agent_version, host, env, uptime_secs), services, running)| AgentStatus {
                agent_version,
                host,
                env,
                uptime_secs,
                services,
                running,
                approvals: None,
                host_health: None,
            },
        );
    let action = one_of(vec![
        proto::Action::Deploy,
        proto::Action::Rollback,
        proto::Action::Exec,
    ]);
    let history_entry = (
        (text(), text(), action, text(), text(), ts(), text()),
        (image(), text(), proptest::collection::vec(text(), 0..3)),
        (
            proptest::option::of(outcome_kind()),
            proptest::option::of(text()),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            proptest::option::of(any::<i64>()),
        ),
    )
        .prop_map(
            |(
                (order_id, rollout_id, action, signer, issued_by, accepted_at, reference),
                (image, app, services),
                (outcome, reason, duration_ms, run_migration, exit_code),
            )| HistoryEntry {
                order_id,
                rollout_id,
                action,
                signer,
                issued_by,
                accepted_at,
                reference,
                image,
                images: Default::default(),
                refs: Default::default(),
                app,
                services,
                outcome,
                reason,
                duration_ms,
                run_migration,
                exit_code,
                proposal: None,
                override_freeze: None,
            },
        );
    let logs = (
        text(),
        text(),
        text(),
        proptest::collection::vec(text(), 0..4),
    )
        .prop_map(|(app, service, container, lines)| ServiceLogs {
            app,
            service,
            container,
            lines,
        });
    prop_oneof![
        (any::<u32>(), text(), text(), text()).prop_map(|(protocol, agent_version, host, env)| {
            Reply::Hello {
                protocol,
                agent_version,
                host,
                env,
            }
        }),
        event.prop_map(|event| Reply::Event { event }),
        outcome.prop_map(|outcome| Reply::Outcome { outcome }),
        (refusal_kind(), text(), proptest::option::of(lock_holder())).prop_map(
            |(kind, message, holder)| Reply::Refused {
                refusal: Refusal {
                    kind,
                    message,
                    holder
                }
            }
        ),
        status.prop_map(|status| Reply::Status { status }),
        proptest::collection::vec(history_entry, 0..3)
            .prop_map(|entries| Reply::History { entries }),
        proptest::collection::vec(logs, 0..3).prop_map(|logs| Reply::Logs { logs }),
        (
            text(),
            one_of(vec![OutputStream::Stdout, OutputStream::Stderr]),
            text()
        )
            .prop_map(|(order_id, stream, line)| Reply::Output {
                output: OutputLine {
                    order_id,
                    stream,
                    line
                }
            }),
        text().prop_map(|message| Reply::Error { message }),
    ]
}

/// Feeds `bytes` to a FrameBuffer in chunks of the given sizes (cycled) and collects frames.
fn split_frames(bytes: &[u8], chunk_sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut fb = FrameBuffer::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        fb.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(frame) = fb.next_frame().unwrap() {
            frames.push(frame);
        }
    }
    assert!(!fb.has_partial());
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn request_frames_round_trip(msgs in proptest::collection::vec(request(), 1..6),
                                 chunks in proptest::collection::vec(1usize..200, 1..8)) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| codec::encode(m).unwrap()).collect();
        let frames = split_frames(&bytes, &chunks);
        let decoded: Vec<Request> = frames.iter().map(|f| codec::decode(f).unwrap()).collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn reply_frames_round_trip(msgs in proptest::collection::vec(reply(), 1..6),
                               chunks in proptest::collection::vec(1usize..500, 1..8)) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| codec::encode(m).unwrap()).collect();
        let frames = split_frames(&bytes, &chunks);
        prop_assert_eq!(frames.len(), msgs.len());
        let decoded: Vec<Reply> = frames.iter().map(|f| codec::decode(f).unwrap()).collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                   chunks in proptest::collection::vec(1usize..50, 1..4)) {
        let mut fb = FrameBuffer::new();
        for chunk in bytes.chunks(chunks[0]) {
            fb.push(chunk);
            while let Ok(Some(frame)) = fb.next_frame() {
                let _ = codec::decode::<Request>(&frame);
                let _ = codec::decode::<Reply>(&frame);
            }
        }
    }
}

#[test]
fn malformed_frames_are_errors() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let oversized = format!(
        "{{\"type\":\"watch\",\"order_id\":\"{}\"}}",
        "x".repeat(MAX_FRAME)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"hello there".to_vec()),
        (
            "truncated",
            br#"{"type":"hello","protocol":1,"cli"#.to_vec(),
        ),
        ("unknown type", br#"{"type":"reboot"}"#.to_vec()),
        ("missing type", br#"{"protocol":1,"client":"x"}"#.to_vec()),
        (
            "unknown field",
            br#"{"type":"hello","protocol":1,"client":"x","admin":true}"#.to_vec(),
        ),
        (
            "unknown field in unit-like",
            br#"{"type":"status","verbose":true}"#.to_vec(),
        ),
        (
            "wrong field type",
            br#"{"type":"history","limit":-1}"#.to_vec(),
        ),
        (
            "not utf-8",
            b"{\"type\":\"watch\",\"order_id\":\"\xff\xfe\"}".to_vec(),
        ),
        ("empty line", b"\n".to_vec()),
        ("empty", b"".to_vec()),
        ("whitespace", b"   \r\n".to_vec()),
        ("json array", b"[]".to_vec()),
        ("json null", b"null".to_vec()),
        (
            "two objects",
            br#"{"type":"status"}{"type":"status"}"#.to_vec(),
        ),
        ("deep nesting", deep.into_bytes()),
        ("oversized", oversized.into_bytes()),
        (
            "submit with unsigned order",
            br#"{"type":"submit","order":{"payload":"{}"}}"#.to_vec(),
        ),
    ];
    for (name, input) in cases {
        let err = codec::decode::<Request>(&input).expect_err(name);
        let msg = err.to_string();
        match name {
            "not utf-8" => assert!(matches!(err, CodecError::NotUtf8 { .. }), "{name}: {msg}"),
            "oversized" => assert!(matches!(err, CodecError::Oversized { .. }), "{name}: {msg}"),
            _ => assert!(matches!(err, CodecError::Malformed(_)), "{name}: {msg}"),
        }
        if name == "unknown type" {
            assert!(msg.contains("reboot"), "{msg}");
        }
        if name == "unknown field" {
            assert!(msg.contains("admin"), "{msg}");
        }
    }
    // Replies are just as strict.
    assert!(
        codec::decode::<Reply>(br#"{"type":"refused","refusal":{"kind":"nope","message":"x"}}"#)
            .is_err()
    );
    assert!(codec::decode::<Reply>(br#"{"type":"error","message":"x","extra":1}"#).is_err());
}

#[test]
fn frame_buffer_reports_oversized_frame_without_newline() {
    let mut fb = FrameBuffer::new();
    let chunk = vec![b'a'; 1 << 20];
    let mut err = None;
    for _ in 0..5 {
        fb.push(&chunk);
        if let Err(e) = fb.next_frame() {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(CodecError::Oversized { .. })), "{err:?}");
    assert!(fb.buffered() <= MAX_FRAME);
}

#[test]
fn encode_refuses_an_oversized_message() {
    let msg = Reply::Error {
        message: "x".repeat(MAX_FRAME),
    };
    assert!(matches!(
        codec::encode(&msg),
        Err(CodecError::Oversized { .. })
    ));
    let frame = codec::encode(&codec::hello_request("deployctl/test")).unwrap();
    assert_eq!(frame.last(), Some(&b'\n'));
    assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 1);
}

/// The hello exchange is the part of the wire format that never changes (wire's module docs):
/// its three frames, byte for byte, and how each side reads a peer of another version.
#[test]
fn the_hello_exchange_is_frozen() {
    fn frame<T: serde::Serialize>(msg: &T) -> String {
        String::from_utf8(codec::encode(msg).unwrap()).unwrap()
    }
    let v = wire::PROTOCOL_VERSION;
    let sent = [
        frame(&codec::hello_request("deployctl/1.0")),
        frame(&Reply::Hello {
            protocol: v,
            agent_version: "1.0".into(),
            host: "h1".into(),
            env: "staging".into(),
        }),
        frame(&wire::protocol_refusal(v + 1, "1.0")),
    ];
    expect_test::expect![[r#"
        {"type":"hello","protocol":1,"client":"deployctl/1.0"}
        {"type":"hello","protocol":1,"agent_version":"1.0","host":"h1","env":"staging"}
        {"type":"refused","refusal":{"kind":"protocol-version","message":"this agent (deploy-agent 1.0) speaks protocol version 1, the client speaks version 2","protocol":1,"agent_version":"1.0"}}
    "#]]
    .assert_eq(&sent.concat());

    // What another version may send, read leniently by either side.
    use wire::{Greeting, HelloAnswer, HelloRefusal};
    let greetings = [
        (
            r#"{"type":"hello","protocol":7,"client":"deployctl/9","features":["x"]}"#,
            Greeting::Hello {
                protocol: 7,
                client: "deployctl/9".into(),
            },
        ),
        (r#"{"type":"status"}"#, Greeting::NotHello),
    ];
    for (text, want) in greetings {
        assert_eq!(codec::decode::<Greeting>(text.as_bytes()).unwrap(), want);
    }
    assert!(codec::decode::<Greeting>(br#"{"type":"hello"}"#).is_err());
    let answers = [
        (
            r#"{"type":"hello","protocol":7,"agent_version":"9","host":"h","env":"e","x":1}"#,
            HelloAnswer::Hello {
                protocol: 7,
                agent_version: "9".into(),
                host: "h".into(),
                env: "e".into(),
            },
        ),
        (
            r#"{"type":"hello","protocol":7}"#,
            HelloAnswer::Hello {
                protocol: 7,
                agent_version: String::new(),
                host: String::new(),
                env: String::new(),
            },
        ),
        (
            r#"{"type":"refused","refusal":{"kind":"protocol-version","message":"m","since":3}}"#,
            HelloAnswer::Refused {
                refusal: HelloRefusal {
                    kind: "protocol-version".into(),
                    message: "m".into(),
                    protocol: None,
                    agent_version: None,
                },
            },
        ),
        (
            r#"{"type":"error","message":"no"}"#,
            HelloAnswer::Error {
                message: "no".into(),
            },
        ),
        (r#"{"type":"status","status":{}}"#, HelloAnswer::Other),
    ];
    for (text, want) in answers {
        assert_eq!(codec::decode::<HelloAnswer>(text.as_bytes()).unwrap(), want);
    }
}
