//! k-of-n approvals (README, "Approvals") over real SSH to a real agent: a push to prod proposes
//! (exit 4) and changes nothing; each wrong approval is refused with its own kind and changes
//! nothing; an order that bypasses the controller is refused by the agent itself; proposals
//! survive an agent restart; an approval made with `ssh-keygen -Y sign` counts; with two
//! approvals `approve --run` rolls the release out and the journal names the proposal; an
//! expired proposal cannot be approved.

use harness::agents::TestKey;
use proto::approval::NAMESPACE;
use proto::time::Timestamp;
use proto::wire::RefusalKind;

use super::*;

/// The prod host's approvers and the keys that must not count.
struct Keys {
    alice: TestKey,
    bob: TestKey,
    /// Trusted for approvals, but not in `[approvals] principals`.
    carol: TestKey,
    /// Trusted for nothing.
    outsider: TestKey,
}

impl Keys {
    fn generate() -> anyhow::Result<Keys> {
        Ok(Keys {
            alice: TestKey::generate("alice@acme")?,
            bob: TestKey::generate("bob@acme")?,
            carol: TestKey::generate("carol@acme")?,
            outsider: TestKey::generate("outsider@nowhere")?,
        })
    }

    /// allowed_signers lines trusting a key for approvals only.
    fn approver_lines(&self) -> Vec<String> {
        [&self.alice, &self.bob, &self.carol]
            .iter()
            .map(|k| k.allowed_signers_line.replace("deployctl-order", NAMESPACE))
            .collect()
    }
}

/// One prod host requiring 2 approvals of alice, bob or the fleet's own deployer (who proposes).
fn prod(keys: &Keys) -> anyhow::Result<World> {
    let w = world(&[EnvPlan::new("prod", 1)], |_, _, setup| {
        setup.extra_signers.extend(keys.approver_lines());
        // `[policy]` is the last table of the harness's agent.toml: a table after it is the file's.
        setup.policy.push_str(
            "\n[approvals]\nrequired = 2\nprincipals = [\"alice@acme\", \"bob@acme\", \"deployer@deployctl-test\"]\n",
        );
    })?;
    Ok(w)
}

impl World {
    /// `deployctl args…` signing with `key`.
    fn run_as(&self, key: &TestKey, args: &[&str]) -> anyhow::Result<Run> {
        Ok(self.fleet.run(
            self.fleet
                .command(args)
                .env("DEPLOYCTL_SIGNING_KEY", &key.private_path),
        )?)
    }
}

/// What "nothing changed" compares: the journal's length and the version served.
fn unchanged(w: &World, before: &(usize, String), what: &str) -> anyhow::Result<()> {
    let h = &w.fleet.hosts("prod")[0];
    let now = (history(h)?.len(), version_of(h)?);
    ensure!(
        now == *before,
        "{what} changed the host: {before:?} → {now:?}"
    );
    Ok(())
}

fn snapshot(w: &World) -> anyhow::Result<(usize, String)> {
    let h = &w.fleet.hosts("prod")[0];
    Ok((history(h)?.len(), version_of(h)?))
}

/// A refused `approve` names its refusal kind.
fn refused(run: &Run, kind: &str, what: &str) -> anyhow::Result<()> {
    run.expect(3).with_context(|| what.to_string())?;
    ensure!(
        run.output().contains(kind),
        "{what}: the refusal names {kind}:\n{}",
        run.output()
    );
    Ok(())
}

/// The proposal rows `approvals --env prod --json` lists.
fn listed(w: &World) -> anyhow::Result<Vec<serde_json::Value>> {
    let run = w.run(&["approvals", "--env", "prod", "--json"])?;
    run.expect(0)?;
    Ok(run
        .json_lines()
        .into_iter()
        .filter(|v| v["event"] == "proposal")
        .collect())
}

#[test]
fn a_push_to_prod_waits_for_two_approvals_and_runs_once_approved() -> anyhow::Result<()> {
    let keys = Keys::generate()?;
    let mut w = prod(&keys)?;
    let before = snapshot(&w)?;

    // 1. The push proposes, exit 4, and nothing runs.
    let run = w.run(&["push", "v1", "--env", "prod", "--json"])?;
    run.expect(4)?;
    let summary = run.summary()?;
    ensure!(
        summary["result"] == "waiting" && summary["held"] == 0 && summary["required"] == 2,
        "{summary}"
    );
    let id = summary["proposal"]
        .as_str()
        .context("proposal id")?
        .to_string();
    unchanged(&w, &before, "a proposal")?;
    // The same push again finds it rather than proposing twice.
    let run = w.run(&["push", "v1", "--env", "prod", "--json"])?;
    run.expect(4)?;
    ensure!(run.summary()?["proposal"] == id.as_str(), "{}", run.stdout);
    let rows = listed(&w)?;
    ensure!(
        rows.len() == 1 && rows[0]["id"] == id.as_str() && rows[0]["held"] == 0,
        "{rows:?}"
    );

    // 2. Approvals that must not count.
    let run = w.run(&["approve", &id, "--env", "prod"])?;
    refused(&run, "self-approval", "the proposer's own approval")?;
    refused(
        &w.run_as(&keys.outsider, &["approve", &id, "--env", "prod"])?,
        "unknown-signer",
        "an untrusted key",
    )?;
    refused(
        &w.run_as(&keys.carol, &["approve", &id, "--env", "prod"])?,
        "not-an-approver",
        "a principal not in [approvals]",
    )?;
    w.run_as(&keys.alice, &["approve", &id, "--env", "prod"])?
        .expect(4)?;
    refused(
        &w.run_as(&keys.alice, &["approve", &id, "--env", "prod"])?,
        "duplicate-approval",
        "alice twice",
    )?;
    unchanged(&w, &before, "the refused approvals")?;

    // 3. Orders straight to the agent's socket, bypassing deployctl: refused by the agent.
    let host = &w.fleet.hosts("prod")[0];
    let v1 = w.images.v(1).image_ref.clone();
    let mut order = host.agent.order(APP, &v1, "v1");
    let submit = |order: &proto::Order| {
        block_on(async {
            let signed = host.agent.sign(order).await?;
            anyhow::Ok(host.agent.client().await?.submit(signed).await?)
        })
    };
    for (proposal, held) in [(None, "0 of 2"), (Some(id.clone()), "1 of the 2")] {
        order.order_id = proto::order::new_id();
        order.proposal = proposal;
        let refusal = submit(&order)?.refusal()?.clone();
        ensure!(
            refusal.kind == RefusalKind::ApprovalRequired && refusal.message.contains(held),
            "{refusal:?}"
        );
    }
    unchanged(&w, &before, "orders without enough approvals")?;

    // 4. Proposals and their approvals survive a restart.
    w.fleet.hosts_mut("prod")[0].agent.restart()?;
    let rows = listed(&w)?;
    ensure!(
        rows.len() == 1 && rows[0]["held"] == 1 && rows[0]["approved_by"][0] == "alice@acme",
        "{rows:?}"
    );

    // 5. Bob signs the proposal's bytes with ssh-keygen; `approve --run` rolls it out.
    let bytes = w.fleet.home().join("proposal.json");
    let out = bytes.display().to_string();
    w.run(&["approvals", "--env", "prod", "--show", &id, "--out", &out])?
        .expect(0)?;
    harness::command::run(
        std::process::Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", NAMESPACE, "-f"])
            .arg(&keys.bob.private_path)
            .arg(&bytes),
    )?;
    let sig = format!("{out}.sig");
    let run = w.run(&[
        "approve",
        &id,
        "--env",
        "prod",
        "--signature",
        &sig,
        "--run",
    ])?;
    run.expect(0)?;
    w.expect_versions("prod", "v1")?;
    let entry = &history(&w.fleet.hosts("prod")[0])?[0];
    ensure!(
        entry.proposal.as_deref() == Some(id.as_str())
            && entry.outcome == Some(OutcomeKind::Succeeded),
        "history names the proposal: {entry:?}"
    );
    // The same push again runs with the approved proposal.
    w.run(&["push", "v1", "--env", "prod"])?.expect(0)?;

    // 6. An expired proposal is refused, then forgotten.
    let before = snapshot(&w)?;
    let run = w.run(&["push", "v2", "--env", "prod", "--expires", "2s", "--json"])?;
    run.expect(4)?;
    let id2 = run.summary()?["proposal"]
        .as_str()
        .context("proposal id")?
        .to_string();
    let row = run
        .json_lines()
        .into_iter()
        .find(|v| v["event"] == "proposal")
        .context("proposal row")?;
    let expires = Timestamp::parse(row["expires_at"].as_str().context("expires_at")?)?;
    wait_until("the proposal to expire", Duration::from_secs(30), || {
        if Timestamp::now() > expires.plus(Duration::from_secs(1)) {
            Ok(())
        } else {
            Err(format!("not yet {expires}"))
        }
    })?;
    refused(
        &w.run_as(&keys.alice, &["approve", &id2, "--env", "prod"])?,
        "expired",
        "an expired proposal",
    )?;
    ensure!(
        listed(&w)?.iter().all(|r| r["id"] != id2.as_str()),
        "an expired proposal is still listed"
    );
    unchanged(&w, &before, "an expired proposal")?;
    Ok(())
}

/// A canary in an env with approvals: the release the approvals let in regresses on the canary
/// during its watch, and the rollback order the rollout sends it — which names the same
/// proposal, back to exactly what the host ran before — is admitted without new approvals.
/// The other host is never touched.
#[test]
fn an_approved_canary_that_regresses_is_rolled_back_without_new_approvals() -> anyhow::Result<()> {
    let keys = Keys::generate()?;
    let w = world(
        &[EnvPlan::new("prod", 2).line(r#"canary = { hosts = 1, watch = "8s" }"#)],
        |_, _, setup| {
            setup.extra_signers.extend(keys.approver_lines());
            setup.policy.push_str(
                "\n[approvals]\nrequired = 1\nprincipals = [\"alice@acme\", \"bob@acme\"]\n",
            );
        },
    )?;
    let approve_and_run = |reference: &str, want: i32| -> anyhow::Result<Run> {
        let run = w.run(&["push", reference, "--env", "prod", "--json"])?;
        run.expect(4)?;
        let id = run.summary()?["proposal"]
            .as_str()
            .context("proposal id")?
            .to_string();
        w.run_as(&keys.alice, &["approve", &id, "--env", "prod"])?
            .expect(0)?;
        // The deployer pushes again: the proposal is approved, so it runs.
        let run = w.run(&["push", reference, "--env", "prod"])?;
        run.expect(want)?;
        Ok(run)
    };
    approve_and_run(&w.sha(1), 0)?;
    w.expect_versions("prod", "v1")?;
    let untouched = &w.fleet.hosts("prod")[1];
    let journal = history(untouched)?.len();

    let v6 = &harness::build_demo_images()?[5];
    let sha = harness::fake_git_sha("approved, dies after 3s");
    let late = harness::derive_image(v6, "ENV DEMO_CRASH_AFTER_MS=3000")?;
    w.images.push_image(&late, &sha)?;
    let run = approve_and_run(&sha, 1)?;
    ensure!(
        run.output().contains("canary regressed"),
        "{}",
        run.output()
    );
    w.expect_versions("prod", "v1")?;
    let canary = &w.fleet.hosts("prod")[0];
    let back = &history(canary)?[0];
    ensure!(
        back.action == proto::Action::Rollback && back.outcome == Some(OutcomeKind::Succeeded),
        "the canary's way back was admitted: {back:?}"
    );
    ensure!(
        history(untouched)?.len() == journal,
        "the other host got an order"
    );
    Ok(())
}

/// A freeze holds on an env with approvals: a push is refused (`frozen`) however approved;
/// `--override-freeze REASON` proposes the release *with* the override, and once approved it
/// runs, the journal saying it overrode the window and why.
#[test]
fn an_approved_override_runs_inside_a_freeze_and_is_journaled_as_one() -> anyhow::Result<()> {
    let keys = Keys::generate()?;
    let now = Timestamp::now().unix_secs();
    let from = Timestamp::from_unix_secs(now.saturating_sub(3600)).to_string();
    let to = Timestamp::from_unix_secs(now + 3600).to_string();
    let w = world(&[EnvPlan::new("prod", 1)], |_, _, setup| {
        setup.extra_signers.extend(keys.approver_lines());
        setup.policy.push_str(&format!(
            "\n[approvals]\nrequired = 1\nprincipals = [\"alice@acme\"]\n\n\
             [[freeze]]\nfrom = \"{from}\"\nto = \"{to}\"\nreason = \"year-end freeze\"\n"
        ));
    })?;
    let propose = |args: &[&str]| -> anyhow::Result<String> {
        let run = w.run(args)?;
        run.expect(4)?;
        Ok(run.summary()?["proposal"]
            .as_str()
            .context("proposal id")?
            .to_string())
    };
    // Approved, but without an override: the window holds.
    let id = propose(&["push", "v1", "--env", "prod", "--json"])?;
    w.run_as(&keys.alice, &["approve", &id, "--env", "prod"])?
        .expect(0)?;
    let run = w.run(&["push", "v1", "--env", "prod"])?;
    refused(&run, "frozen", "an approved push inside a freeze")?;
    ensure!(run.output().contains("year-end freeze"), "{}", run.output());
    w.expect_versions("prod", "")?;

    // With the override: a proposal of its own, approved, then it runs.
    let reason = "hotfix for the checkout outage";
    let push = ["push", "v1", "--env", "prod", "--override-freeze", reason];
    let mut json = push.to_vec();
    json.push("--json");
    let id = propose(&json)?;
    let rows = listed(&w)?;
    ensure!(
        rows.iter()
            .any(|r| r["id"] == id.as_str() && r.to_string().contains(reason)),
        "approvers see the override: {rows:?}"
    );
    w.run_as(&keys.alice, &["approve", &id, "--env", "prod"])?
        .expect(0)?;
    w.run(&push)?.expect(0)?;
    w.expect_versions("prod", "v1")?;
    let host = &w.fleet.hosts("prod")[0];
    let entry = &history(host)?[0];
    let journal = host.agent.journal(&entry.order_id)?;
    ensure!(
        journal.to_string().contains("OVERRIDES the freeze")
            && journal.to_string().contains("year-end freeze")
            && journal.to_string().contains(reason),
        "the journal records the override: {journal}"
    );
    ensure!(
        entry.override_freeze.as_deref() == Some(reason),
        "history says it overrode a freeze: {entry:?}"
    );
    let run = w.run(&["history", "--env", "prod"])?;
    ensure!(run.stdout.contains("OVERRODE a freeze"), "{}", run.output());
    Ok(())
}
