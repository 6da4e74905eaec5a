//! The habits a user brings to a CLI: deploy.toml found from a subdirectory or through
//! `$DEPLOYCTL_CONFIG`; shell completions that the shells themselves accept and complete with;
//! man pages that groff renders without a warning; no colour codes where stderr is not a
//! terminal (the agent's journal, deployctl in CI).

use std::process::Command;

use harness::command::output_with_timeout;
use harness::hosts::{DEPLOYCTL_TIMEOUT, deployctl_binary};

use super::*;

#[test]
fn deploy_toml_is_found_from_a_subdirectory_or_deployctl_config_and_logs_carry_no_colour()
-> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    let home = w.fleet.home();

    // From a subdirectory of the app, as git finds its repository: the parent's deploy.toml.
    let deep = home.join("src/deep");
    std::fs::create_dir_all(&deep)?;
    let mut push = w
        .fleet
        .command(&["push", &w.sha(1), "--env", "staging", "--json"]);
    w.fleet.run(push.current_dir(&deep))?.expect(0)?;
    w.expect_versions("staging", "v1")?;

    // From elsewhere: $DEPLOYCTL_CONFIG names it; without it, the missing file is named.
    let elsewhere = tempfile::tempdir()?;
    let mut status = w.fleet.command(&["status", "--env", "staging", "--json"]);
    status
        .current_dir(elsewhere.path())
        .env("DEPLOYCTL_CONFIG", home.join("deploy.toml"));
    let run = w.fleet.run(&mut status)?;
    run.expect(0)?;
    ensure!(run.summary()?["consistent"] == true, "{}", run.output());
    let mut status = w.fleet.command(&["status", "--env", "staging"]);
    status
        .current_dir(elsewhere.path())
        .env_remove("DEPLOYCTL_CONFIG");
    let run = w.fleet.run(&mut status)?;
    run.expect(3)?;
    ensure!(
        run.stderr.contains("cannot read deploy.toml")
            && run.stderr.contains("nothing was changed"),
        "{}",
        run.output()
    );

    // Logs into a pipe, as journald and CI take them: no ANSI escapes, from either side.
    let mut logged = w.fleet.command(&["status", "--env", "staging", "--json"]);
    let run = w.fleet.run(logged.env("DEPLOYCTL_LOG", "debug"))?;
    run.expect(0)?;
    let agent_log = w.fleet.hosts("staging")[0].agent.log();
    ensure!(
        run.stderr.contains("DEBUG") && agent_log.contains("INFO"),
        "nothing logged to check:\n{}\n{agent_log}",
        run.stderr
    );
    ensure!(
        !run.stderr.contains('\x1b') && !agent_log.contains('\x1b'),
        "colour codes in a log that is no terminal:\n{}\n{agent_log}",
        run.stderr
    );
    Ok(())
}

#[test]
fn completions_complete_in_their_shells_and_the_man_pages_render_without_warnings()
-> anyhow::Result<()> {
    require_prereqs()?;
    let dir = tempfile::tempdir()?;
    let deployctl = |args: &[&str]| -> anyhow::Result<String> {
        let out = output_with_timeout(
            Command::new(deployctl_binary()?).args(args),
            DEPLOYCTL_TIMEOUT,
        )?;
        ensure!(
            out.status.success(),
            "deployctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let shell = |program: &str, args: &[&str]| -> anyhow::Result<String> {
        let out = output_with_timeout(Command::new(program).args(args), DEPLOYCTL_TIMEOUT)?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    for name in ["bash", "zsh", "fish"] {
        std::fs::write(dir.path().join(name), deployctl(&["completions", name])?)?;
    }
    let script = |name: &str| dir.path().join(name).display().to_string();

    // bash: a subcommand, then a flag of it
    let bash = shell(
        "bash",
        &[
            "-c",
            r#"source "$0"
COMP_WORDS=(deployctl se); COMP_CWORD=1; _deployctl deployctl se deployctl; echo "${COMPREPLY[*]}"
COMP_WORDS=(deployctl setup --dr); COMP_CWORD=2; _deployctl deployctl --dr setup; echo "${COMPREPLY[*]}""#,
            &script("bash"),
        ],
    )?;
    ensure!(bash == "setup\n--dry-run\n", "bash completed {bash:?}");
    // fish completes too; zsh's script must parse (completing needs its interactive compsys)
    let fish = shell(
        "fish",
        &[
            "-c",
            r#"source $argv[1]; complete -C "deployctl se"; complete -C "deployctl setup --up""#,
            &script("fish"),
        ],
    )?;
    let words: Vec<&str> = fish
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default())
        .collect();
    ensure!(words == ["setup", "--upgrade"], "fish completed {fish:?}");
    shell("zsh", &["-n", &script("zsh")])?;

    // man: one page on stdout, or a page per subcommand as its SUBCOMMANDS section names them;
    // rendered as man-db does, through preconv (-k): the help texts hold UTF-8 (—, ≥, …)
    let page = deployctl(&["man"])?;
    ensure!(page.contains(".TH deployctl 1") && page.contains("deployctl\\-setup(1)"));
    let pages = dir.path().join("man1");
    deployctl(&["man", "--dir", &pages.display().to_string()])?;
    for name in [
        "deployctl.1",
        "deployctl-setup.1",
        "deployctl-keys-generate.1",
    ] {
        let file = pages.join(name).display().to_string();
        let text = shell(
            "groff",
            &["-k", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u", &file],
        )?;
        ensure!(text.contains("SYNOPSIS"), "{name} rendered as {text}");
    }
    let setup = shell(
        "groff",
        &[
            "-k",
            "-man",
            "-Tascii",
            "-ww",
            "-P-c",
            "-P-b",
            "-P-u",
            &pages.join("deployctl-setup.1").display().to_string(),
        ],
    )?;
    ensure!(
        setup.contains("--upgrade") && setup.contains("--dry-run"),
        "deployctl-setup(1) lacks its flags: {setup}"
    );
    Ok(())
}
