//! Release policy end to end (README, "Release policy"; issue 13): over real SSH to a real
//! agent, a host's `[[freeze]]` window refuses deploys and rollbacks while it holds (`frozen`,
//! exit 3, naming the window's reason) but not one-off commands, and its `[refs]` admits only
//! releases whose images carry a final tag of an allowed form and no `ephemeral-*` one
//! (`ref-not-allowed`) — the tags deployctl found in the registry, not only the one typed.
//! Every refusal leaves the host as it was.

use std::time::{SystemTime, UNIX_EPOCH};

use harness::{LocalImage, build_demo_images, derive_image};

use super::*;

/// One staging host, and the `[policy]` body the harness gives agents by default (host paths
/// under the temp dir, where the world keeps its data volume).
struct PolicyHost {
    w: World,
    base: String,
}

impl PolicyHost {
    fn start() -> anyhow::Result<PolicyHost> {
        let mut base = String::new();
        let w = world(&[EnvPlan::new("staging", 1)], |_, _, setup| {
            base = setup.policy.clone();
        })?;
        Ok(PolicyHost { w, base })
    }

    fn host(&self) -> &SshHost {
        &self.w.fleet.hosts("staging")[0]
    }

    /// `[policy]` as by default, followed by `tables` (`[[freeze]]`, `[refs]`); the agent
    /// restarts to load it.
    fn set_release_policy(&mut self, tables: &str) -> anyhow::Result<()> {
        let body = format!("{}\n{tables}", self.base);
        self.w.fleet.hosts_mut("staging")[0]
            .agent
            .set_policy(&body)?;
        Ok(())
    }

    /// What the host runs and has journaled: "nothing changed" compares these.
    fn state(&self) -> anyhow::Result<(String, usize)> {
        Ok((version_of(self.host())?, history(self.host())?.len()))
    }

    /// `deployctl ARGS` is refused (exit 3) with `kind`, its output naming each of `names`, and
    /// the host unchanged.
    fn refused(&self, args: &[&str], kind: &str, names: &[&str]) -> anyhow::Result<()> {
        let before = self.state()?;
        let run = self.w.run(args)?;
        run.expect(3).with_context(|| args.join(" "))?;
        let out = run.output();
        for want in std::iter::once(kind).chain(names.iter().copied()) {
            ensure!(
                out.contains(want),
                "{}: the refusal does not name {want:?}:\n{out}",
                args.join(" ")
            );
        }
        ensure!(
            self.state()? == before,
            "{}: a refused order changed the host",
            args.join(" ")
        );
        Ok(())
    }
}

/// Days since the epoch and the weekday (`Mon` …) of `secs` in UTC.
fn day_of(secs: u64) -> (u64, &'static str) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let day = secs / 86_400;
    (day, DAYS[(day % 7) as usize])
}

fn rfc3339(secs: u64) -> String {
    proto::Timestamp::from_unix_secs(secs).to_string()
}

#[test]
fn a_freeze_window_refuses_releases_while_it_holds() -> anyhow::Result<()> {
    let mut p = PolicyHost::start()?;
    p.w.run(&["push", &p.w.sha(1), "--env", "staging"])?
        .expect(0)?;
    p.w.run(&["push", &p.w.sha(2), "--env", "staging"])?
        .expect(0)?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (today, _) = day_of(now);
    let weekday = |offset: i64| day_of((today as i64 + offset).max(0) as u64 * 86_400).1;
    // Amsterdam is an hour or two ahead of UTC, so from yesterday's start to tomorrow's end
    // (UTC days) holds now there whatever the hour.
    p.set_release_policy(&format!(
        "[[freeze]]\nweekly = {{ from = \"{} 00:00\", to = \"{} 23:59\" }}\ntz = \"Europe/Amsterdam\"\nreason = \"weekly e2e freeze\"\n",
        weekday(-1),
        weekday(1)
    ))?;
    let v1 = p.w.sha(1);
    p.refused(
        &["push", &v1, "--env", "staging"],
        "frozen",
        &["weekly e2e freeze", "Europe/Amsterdam", "[[freeze]]"],
    )?;
    p.refused(
        &["rollback", "--env", "staging"],
        "frozen",
        &["weekly e2e freeze"],
    )?;
    // A one-off command changes no release: a freeze lets it run.
    let run =
        p.w.run(&["exec", "--env", "staging", "--", "/app", "version"])?;
    run.expect(0)?;
    ensure!(run.stdout.contains("v2"), "{}", run.output());

    p.set_release_policy(&format!(
        "[[freeze]]\nfrom = \"{}\"\nto = \"{}\"\nreason = \"holidays\"\n",
        rfc3339(now - 3600),
        rfc3339(now + 3600)
    ))?;
    p.refused(
        &["push", &v1, "--env", "staging"],
        "frozen",
        &["holidays", &rfc3339(now - 3600)],
    )?;

    // Windows that do not hold now: one in two days, one that ended an hour ago.
    p.set_release_policy(&format!(
        "[[freeze]]\nweekly = {{ from = \"{day} 12:00\", to = \"{day} 13:00\" }}\ntz = \"Europe/Amsterdam\"\nreason = \"later\"\n\
         [[freeze]]\nfrom = \"{}\"\nto = \"{}\"\nreason = \"over\"\n",
        rfc3339(now - 7200),
        rfc3339(now - 3600),
        day = weekday(2),
    ))?;
    p.w.run(&["push", &v1, "--env", "staging"])?.expect(0)?;
    p.w.expect_versions("staging", "v1")?;
    Ok(())
}

#[test]
fn refs_admit_final_release_tags_only() -> anyhow::Result<()> {
    let mut p = PolicyHost::start()?;
    let images = &p.w.images;
    images.push_tag(1, "v1.3.0-rc.1")?;
    images.push_tag(2, "2023.06.1")?;
    // A throwaway build of v2 that also carries a good tag.
    let local = build_demo_images()?;
    let v2 = local
        .iter()
        .find(|l| l.version == "v2")
        .context("no local v2")?;
    let throwaway: LocalImage = derive_image(v2, "LABEL e2e.build=throwaway")?;
    let ephemeral = images.push_image(&throwaway, "ephemeral-foo")?;
    let good_too = images.push_image(&throwaway, "v2.0.0")?;
    ensure!(ephemeral.digest == good_too.digest, "one image, two tags");

    p.set_release_policy("[refs]\nallow = [\"semver\", \"calver\"]\nprerelease = false\n")?;
    p.refused(
        &["push", "v1.3.0-rc.1", "--env", "staging"],
        "ref-not-allowed",
        &["[refs] prerelease denies services.web", "v1.3.0-rc.1"],
    )?;
    ensure!(history(p.host())?.is_empty(), "the host took an order");

    p.w.run(&["push", "2023.06.1", "--env", "staging"])?
        .expect(0)?;
    p.w.expect_versions("staging", "v2")?;
    p.refused(
        &["push", "ephemeral-foo", "--env", "staging"],
        "ref-not-allowed",
        &["[refs] ephemeral denies services.web", "ephemeral-foo"],
    )?;
    p.refused(
        &["push", "v2.0.0", "--env", "staging"],
        "ref-not-allowed",
        &["[refs] ephemeral", "ephemeral-foo"],
    )?;
    // Rollbacks carry tags too: back to the release candidate is refused.
    p.refused(
        &["rollback", "--env", "staging", "--to", "v1.3.0-rc.1"],
        "ref-not-allowed",
        &["[refs] prerelease", "v1.3.0-rc.1"],
    )?;

    // v1 by its git SHA: the order names every tag deployctl found for its digest — the SHA
    // and the release candidate, no final one.
    p.refused(
        &["push", &p.w.sha(1), "--env", "staging"],
        "ref-not-allowed",
        &["[refs] prerelease", "v1.3.0-rc.1"],
    )?;
    // With pre-releases allowed the same push goes through, found by the listing alone.
    p.set_release_policy("[refs]\nallow = [\"semver\"]\nprerelease = true\n")?;
    let sha1 = p.w.sha(1);
    p.w.run(&["push", &sha1, "--env", "staging"])?.expect(0)?;
    p.w.expect_versions("staging", "v1")?;
    Ok(())
}
