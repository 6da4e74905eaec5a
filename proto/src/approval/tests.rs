//! Approvals as tables: each approval, proposal and order with the verdict it gets.

use expect_test::{Expect, expect};

use super::*;
use crate::sign::{PrivateKey, allowed_signers_line, ed25519_key, sign_in};

const T0: u64 = 1_767_225_600;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0 + secs)
}

/// proposer (orders only), alice and bob (approvers), alice2 (alice's second key), carol
/// (trusted for approvals, not listed), outsider (trusted nowhere).
fn key(name: &str) -> PrivateKey {
    let seed = match name {
        "proposer" => 1,
        "alice" => 2,
        "bob" => 3,
        "carol" => 4,
        "outsider" => 5,
        "alice2" => 6,
        _ => 9,
    };
    ed25519_key(&[seed; 32], name)
}

fn signers(without: &[&str]) -> AllowedSigners {
    let line = |principal: &str, name: &str, ns: &str| {
        allowed_signers_line(principal, key(name).public_key())
            .unwrap()
            .replace(sign::NAMESPACE, ns)
    };
    let mut lines = vec![line("ci@acme", "proposer", sign::NAMESPACE)];
    for (principal, name) in [
        ("alice@acme", "alice"),
        ("bob@acme", "bob"),
        ("carol@acme", "carol"),
        ("alice@acme", "alice2"),
    ] {
        if !without.contains(&name) {
            lines.push(line(principal, name, NAMESPACE));
        }
    }
    AllowedSigners::parse(&lines.join("\n"), "as").unwrap()
}

fn rules() -> ApprovalRules {
    ApprovalRules {
        required: 2,
        principals: vec!["alice@acme".into(), "bob@acme".into(), "ci@acme".into()],
    }
}

fn image(c: char) -> ImageRef {
    ImageRef::new(
        "reg/acme/web",
        &format!("sha256:{}", c.to_string().repeat(64)),
    )
    .unwrap()
}

fn order(action: Action, c: char, proposal: Option<&str>) -> Order {
    let mut o: Order = serde_json::from_value(serde_json::json!({
        "order_id": "o1", "rollout_id": "r1", "env": "prod", "host": "h1",
        "issued_at": at(0), "not_after": at(600), "issued_by": "ci",
        "action": action, "image": image(c), "ref": "v1", "run_migration": false,
        "app": "acme", "services": {"web": {}}
    }))
    .unwrap();
    o.proposal = proposal.map(str::to_string);
    o
}

fn proposal(id: &str) -> Proposal {
    Proposal::for_order(
        &order(Action::Deploy, 'a', None),
        id.into(),
        at(0),
        at(3600),
    )
}

fn signed_by(name: &str, p: &Proposal) -> SignedProposal {
    let payload = p.payload().unwrap();
    let signature = sign_in(sign::NAMESPACE, &key(name), payload.as_bytes()).unwrap();
    SignedProposal { payload, signature }
}

fn held(approvers: &[&str]) -> HeldProposal {
    let signed = signed_by("proposer", &proposal("p1"));
    let (_, proposer) = verify_proposal(&signed, &signers(&[]), "prod", at(1)).unwrap();
    let mut h = HeldProposal {
        signed,
        proposer,
        approvals: Vec::new(),
    };
    for name in approvers {
        let signature = approve(&h, name);
        let approver = Approver {
            principal: format!("{}@acme", name.trim_end_matches('2')),
            fingerprint: sign::fingerprint(key(name).public_key()),
        };
        h.approvals.push(Approval {
            approver,
            signature,
            at: at(2),
        });
    }
    h
}

fn approve(h: &HeldProposal, name: &str) -> String {
    sign_in(NAMESPACE, &key(name), h.signed.payload.as_bytes()).unwrap()
}

fn verdict<T: std::fmt::Debug>(r: Result<T, Rejection>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(r) => format!("{}: {}", r.kind, r.message),
    }
}

fn table(rows: Vec<(&str, String)>, expect: Expect) {
    let out: String = rows
        .into_iter()
        .map(|(label, v)| format!("{label:<22} {v}\n"))
        .collect();
    expect.assert_eq(&out);
}

#[test]
fn approvals() {
    let one = held(&["alice"]);
    let p = one.proposal().unwrap();
    let check = |h: &HeldProposal, signature: &str, now| {
        let v = verify_approval(h, &p, signature, &signers(&[]), &rules(), now);
        verdict(v.map(|a| a.principal))
    };
    let other_payload = sign_in(NAMESPACE, &key("bob"), b"something else").unwrap();
    let order_namespace = sign_in(sign::NAMESPACE, &key("bob"), one.signed.payload.as_bytes());
    // The proposer's principal under another key: still the proposer.
    let mut by_ci = one.clone();
    by_ci.proposer.fingerprint = "SHA256:another".into();
    by_ci.proposer.principal = "bob@acme".into();
    table(
        vec![
            ("bob", check(&one, &approve(&one, "bob"), at(5))),
            (
                "proposer's key",
                check(&one, &approve(&one, "proposer"), at(5)),
            ),
            (
                "proposer's principal",
                check(&by_ci, &approve(&one, "bob"), at(5)),
            ),
            (
                "carol, not listed",
                check(&one, &approve(&one, "carol"), at(5)),
            ),
            ("outsider", check(&one, &approve(&one, "outsider"), at(5))),
            ("alice again", check(&one, &approve(&one, "alice"), at(5))),
            (
                "alice, other key",
                check(&one, &approve(&one, "alice2"), at(5)),
            ),
            (
                "order namespace",
                check(&one, &order_namespace.unwrap(), at(5)),
            ),
            ("other payload", check(&one, &other_payload, at(5))),
            ("not a signature", check(&one, "hello", at(5))),
            ("after expiry", check(&one, &approve(&one, "bob"), at(3600))),
        ],
        expect![[r#"
            bob                    ok "bob@acme"
            proposer's key         self-approval: proposal p1 was made by ci@acme (SHA256:fe85JkIjo8VPe+XqXJGH5Mau1EMFdK1OdKvJUFicyA8); a proposer cannot approve their own proposal
            proposer's principal   self-approval: proposal p1 was made by bob@acme (SHA256:another); a proposer cannot approve their own proposal
            carol, not listed      not-an-approver: approval of proposal p1 by carol@acme (SHA256:vxu9sT7+WkqIPG3kOwohja2DmYBjKw903FLEcS+Xb6o): "carol@acme" is not one of this host's [approvals] principals ["alice@acme", "bob@acme", "ci@acme"]
            outsider               unknown-signer: approval of proposal p1 signed by key SHA256:LA4QoSmstGCy/UHfdU3jKjnPz56pQzud9OmslMh3g8w, which this agent does not trust for approvals (deployctl-approval): the key (ssh-ed25519) is not in allowed_signers
            alice again            duplicate-approval: proposal p1 was already approved by alice@acme (SHA256:4A9jyZBOhnKZvcGQ6TRFbf5Gymb41AfYvYaVmWHD+G4); each approver counts once
            alice, other key       duplicate-approval: proposal p1 was already approved by alice@acme (SHA256:4A9jyZBOhnKZvcGQ6TRFbf5Gymb41AfYvYaVmWHD+G4); each approver counts once
            order namespace        bad-signature: approval of proposal p1 refused: made for namespace "deployctl-order", not "deployctl-approval" (sign the proposal's exact bytes with `ssh-keygen -Y sign -n deployctl-approval`)
            other payload          bad-signature: approval of proposal p1 refused: does not verify over the payload (tampered or corrupt) (sign the proposal's exact bytes with `ssh-keygen -Y sign -n deployctl-approval`)
            not a signature        bad-signature: approval of proposal p1 refused: not an SSH signature (PEM preamble contains invalid data (NUL byte)) (sign the proposal's exact bytes with `ssh-keygen -Y sign -n deployctl-approval`)
            after expiry           expired: proposal p1 expired at 2026-01-01T01:00:00Z (agent clock: 2026-01-01T01:00:00Z); propose it again
        "#]],
    );
}

#[test]
fn proposals() {
    let check = |s: &SignedProposal, env: &str, now| {
        verdict(
            verify_proposal(s, &signers(&[]), env, now)
                .map(|(p, who)| (p.proposal_id, who.principal)),
        )
    };
    let with = |f: fn(&mut Proposal)| {
        let mut p = proposal("p1");
        f(&mut p);
        signed_by("proposer", &p)
    };
    let good = with(|_| {});
    let mut tampered = good.clone();
    tampered.payload = tampered.payload.replace("\"v1\"", "\"v2\"");
    let garbage = SignedProposal {
        payload: "{\"proposal_id\":\"p1\"}".into(),
        signature: sign_in(
            sign::NAMESPACE,
            &key("proposer"),
            b"{\"proposal_id\":\"p1\"}",
        )
        .unwrap(),
    };
    let mut huge = good.clone();
    huge.payload = "x".repeat(MAX_PROPOSAL + 1);
    table(
        vec![
            ("good", check(&good, "prod", at(5))),
            (
                "by alice",
                check(&signed_by("alice", &proposal("p1")), "prod", at(5)),
            ),
            (
                "outsider",
                check(&signed_by("outsider", &proposal("p1")), "prod", at(5)),
            ),
            ("tampered", check(&tampered, "prod", at(5))),
            ("not a proposal", check(&garbage, "prod", at(5))),
            ("oversized", check(&huge, "prod", at(5))),
            ("other env", check(&good, "staging", at(5))),
            ("expired", check(&good, "prod", at(4000))),
            (
                "from the future",
                check(&good, "prod", at(0).minus(Duration::from_secs(120))),
            ),
            (
                "bad id",
                check(&with(|p| p.proposal_id = "../x".into()), "prod", at(5)),
            ),
            (
                "exec",
                check(&with(|p| p.action = Action::Exec), "prod", at(5)),
            ),
            (
                "eight days",
                check(&with(|p| p.expires_at = at(8 * 86_400)), "prod", at(5)),
            ),
        ],
        expect![[r#"
            good                   ok ("p1", "ci@acme")
            by alice               unknown-signer: proposal signed by key SHA256:4A9jyZBOhnKZvcGQ6TRFbf5Gymb41AfYvYaVmWHD+G4, which this agent does not trust for env "prod": as:2 allows it only for namespaces "deployctl-approval"
            outsider               unknown-signer: proposal signed by key SHA256:LA4QoSmstGCy/UHfdU3jKjnPz56pQzud9OmslMh3g8w, which this agent does not trust for env "prod": the key (ssh-ed25519) is not in allowed_signers
            tampered               bad-signature: proposal signature refused: does not verify over the payload (tampered or corrupt)
            not a proposal         malformed: proposal payload is not a proposal: missing field `env` at line 1 column 20
            oversized              oversized: proposal is 16385 bytes with a 310-byte signature; the limits are 16384 and 65536
            other env              env-mismatch: proposal is for env "prod", but this agent serves env "staging"
            expired                expired: proposal p1 expired at 2026-01-01T01:00:00Z (agent clock: 2026-01-01T01:06:40Z); propose it again
            from the future        not-yet-valid: proposal was made at 2026-01-01T00:00:00Z, in the future (agent clock: 2025-12-31T23:58:00Z); check the clocks
            bad id                 malformed: proposal "../x": proposal_id must be 1 to 64 letters, digits, '-' or '_'
            exec                   malformed: proposal "p1": exec orders need no approval; only deploys and rollbacks are proposed
            eight days             malformed: proposal "p1": expires_at 2026-01-09T00:00:00Z must come after proposed_at 2026-01-01T00:00:00Z and within 7days
        "#]],
    );
}

#[test]
fn orders() {
    let two = held(&["alice", "bob"]);
    let one = held(&["alice"]);
    let mut forged = held(&["alice"]);
    // A state file that claims an approval its signature does not make.
    forged.approvals.push(Approval {
        approver: Approver {
            principal: "bob@acme".into(),
            fingerprint: "SHA256:bob".into(),
        },
        signature: approve(&forged, "alice"),
        at: at(3),
    });
    let rules = rules();
    let check = |o: Order, h: Option<&HeldProposal>, without: &[&str], now| {
        verdict(check_order(&o, h, &signers(without), Some(&rules), now))
    };
    let deploy = |c| order(Action::Deploy, c, Some("p1"));
    table(
        vec![
            ("approved", check(deploy('a'), Some(&two), &[], at(5))),
            (
                "no [approvals]",
                verdict(check_order(&deploy('b'), None, &signers(&[]), None, at(5))),
            ),
            (
                "exec",
                check(order(Action::Exec, 'a', None), None, &[], at(5)),
            ),
            (
                "maintenance",
                check(order(Action::Maintenance, 'a', None), None, &[], at(5)),
            ),
            (
                "no proposal named",
                check(order(Action::Deploy, 'a', None), Some(&two), &[], at(5)),
            ),
            ("not held", check(deploy('a'), None, &[], at(5))),
            ("other release", check(deploy('b'), Some(&two), &[], at(5))),
            (
                "rollback",
                check(
                    order(Action::Rollback, 'a', Some("p1")),
                    Some(&two),
                    &[],
                    at(5),
                ),
            ),
            ("one of two", check(deploy('a'), Some(&one), &[], at(5))),
            (
                "forged approval",
                check(deploy('a'), Some(&forged), &[], at(5)),
            ),
            (
                "bob revoked",
                check(deploy('a'), Some(&two), &["bob"], at(5)),
            ),
            ("expired", check(deploy('a'), Some(&two), &[], at(3600))),
        ],
        expect![[r#"
            approved               ok Some(2)
            no [approvals]         ok None
            exec                   ok None
            maintenance            ok None
            no proposal named      approval-required: this host needs 2 approval(s) for a deploy ([approvals] in its agent.toml), and order o1 names no proposal: 0 of 2 held. Propose it with the same push or rollback, then `deployctl approve`
            not held               approval-required: order o1 names proposal p1, which this host does not hold (never proposed here, or expired and pruned): 0 of 2 approvals held
            other release          approval-required: proposal p1 approves the deploy of reg/acme/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa (v1) for acme in prod, not this order's deploy of reg/acme/web@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb (v1) for acme in prod
            rollback               approval-required: proposal p1 approves the deploy of reg/acme/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa (v1) for acme in prod, not this order's rollback of reg/acme/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa (v1) for acme in prod
            one of two             approval-required: proposal p1 holds 1 of the 2 approvals it needs (approved by alice@acme)
            forged approval        approval-required: proposal p1 holds 1 of the 2 approvals it needs (approved by alice@acme)
            bob revoked            approval-required: proposal p1 holds 1 of the 2 approvals it needs (approved by alice@acme)
            expired                approval-required: proposal p1 no longer counts (proposal p1 expired at 2026-01-01T01:00:00Z (agent clock: 2026-01-01T01:00:00Z); propose it again): 0 of 2 approvals held
        "#]],
    );
}

#[test]
fn rules_that_can_never_be_met_are_refused() {
    let r = |required, principals: &[&str]| {
        let rules = ApprovalRules {
            required,
            principals: principals.iter().map(|p| p.to_string()).collect(),
        };
        match rules.check() {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        }
    };
    table(
        vec![
            ("2 of 3", r(2, &["a", "b", "c"])),
            ("0", r(0, &["a"])),
            ("3 of 2", r(3, &["a", "b"])),
            ("a space", r(1, &["a b"])),
            ("empty", r(1, &[""])),
        ],
        expect![[r#"
            2 of 3                 ok
            0                      [approvals] required must be at least 1 (leave [approvals] out for none)
            3 of 2                 [approvals] required = 3 but principals lists 2: no proposal could ever be approved
            a space                [approvals] principals: "a b" is not a principal (no spaces or commas)
            empty                  [approvals] principals: "" is not a principal (no spaces or commas)
        "#]],
    );
}

#[test]
fn a_proposal_covers_exactly_its_release() {
    let p = proposal("p1");
    let mut o = order(Action::Deploy, 'a', Some("p1"));
    assert!(p.covers(&o));
    o.images.insert("worker".into(), image('c'));
    assert!(!p.covers(&o), "another service's image");
    let mut o = order(Action::Deploy, 'a', Some("p1"));
    o.migrate_image = Some(image('d'));
    assert!(!p.covers(&o), "another migration image");
    let mut o = order(Action::Deploy, 'a', Some("p1"));
    o.app = "billing".into();
    assert!(!p.covers(&o), "another app");
    // A payload round-trips to the same bytes: what is shown is what was signed.
    let payload = p.payload().unwrap();
    assert_eq!(
        Proposal::parse(&payload).unwrap().payload().unwrap(),
        payload
    );
}

#[test]
fn only_the_way_back_of_an_approved_order_rides_on_its_approvals() {
    let approved = order(Action::Deploy, 'b', Some("p1"));
    // The approved order replaced digest a with b on this host.
    let outcome: crate::wire::Outcome = serde_json::from_value(serde_json::json!({
        "order_id": "o1", "rollout_id": "r1", "kind": "succeeded", "changed": true,
        "services": {"web": {"digest": image('b').digest(), "previous_digest": image('a').digest()}},
        "started_at": at(0), "finished_at": at(5)
    }))
    .unwrap();
    let back = || order(Action::Rollback, 'a', Some("p1"));
    let rows: Vec<(&str, Order)> = vec![
        ("back to a", back()),
        ("back to c", order(Action::Rollback, 'c', Some("p1"))),
        ("a deploy of a", order(Action::Deploy, 'a', Some("p1"))),
        ("another proposal", order(Action::Rollback, 'a', Some("p2"))),
        ("no proposal", order(Action::Rollback, 'a', None)),
        ("another rollout", {
            let mut o = back();
            o.rollout_id = "r2".into();
            o
        }),
        ("another app", {
            let mut o = back();
            o.app = "other".into();
            o
        }),
        ("a service more", {
            let mut o = back();
            let web = o.services["web"].clone();
            o.services.insert("api".into(), web);
            o
        }),
    ];
    let out: String = rows
        .iter()
        .map(|(what, o)| format!("{what:<18} {}\n", is_revert_of(o, &approved, &outcome)))
        .collect();
    expect![[r#"
        back to a          true
        back to c          false
        a deploy of a      false
        another proposal   false
        no proposal        false
        another rollout    false
        another app        false
        a service more     false
    "#]]
    .assert_eq(&out);
}
