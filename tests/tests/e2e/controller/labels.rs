//! Labels are text anyone with the Docker socket writes, and the agent reports them: a host's
//! status, and the version a push displaced, are printed as text whatever they hold (a
//! non-ASCII digest once panicked the controller; an escape sequence must not reach the
//! terminal).

use super::*;

#[test]
fn a_non_ascii_label_in_a_status_reply_is_printed_not_a_crash() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;

    // The serving container replaced by one with the agent's name and labels but a digest label
    // that is not hex and a ref with an escape sequence in it. Started from the image id, so
    // the digest can only come from the label.
    let host = &w.fleet.hosts("staging")[0];
    let name = host.agent.container_name(APP, "web");
    let serving = docker_inspect(&name)?;
    let image_id = serving["Image"].as_str().context("Image")?.to_string();
    let mut labels: Vec<(String, String)> = serving["Config"]["Labels"]
        .as_object()
        .context("Labels")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let reference = "v1 🦀 \u{1b}[31mred\u{1b}[0m";
    // An odd number of ASCII bytes first, so cutting at 12 bytes would split a character.
    let odd_digest = format!("sha256:a{}", "é".repeat(63));
    for (k, v) in &mut labels {
        if k == proto::order::labels::REF {
            *v = reference.to_string();
        } else if k == proto::order::labels::DIGEST {
            *v = odd_digest.clone();
        }
    }
    let test = harness::unique_name("labels");
    labels.push((harness::TEST_LABEL.to_string(), test.clone()));
    let _cleanup = harness::Cleanup::label(harness::TEST_LABEL, &test);
    docker(&["rm", "-f", &name])?;
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        name.clone(),
    ];
    for (k, v) in &labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image_id);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

    // Human: the ref is shown with its escapes as text, the odd digest as no digest.
    let run = w.run(&["status", "--env", "staging"])?;
    ensure!(
        matches!(run.code, Some(0 | 1)),
        "status ends with a verdict, not a crash:\n{}",
        run.output()
    );
    ensure!(
        run.stdout.contains(r"v1 🦀 \u{1b}[31mred\u{1b}[0m"),
        "the ref is printed as text:\n{}",
        run.output()
    );
    ensure!(
        !run.output().contains('\u{1b}'),
        "an escape sequence reached the terminal:\n{}",
        run.output()
    );

    // JSON: escaped by JSON, and the same text once decoded.
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    ensure!(matches!(run.code, Some(0 | 1)), "{}", run.output());
    ensure!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    let line = run
        .json_lines()
        .into_iter()
        .find(|v| v["event"] == "host_status")
        .context("a host_status line")?;
    ensure!(
        line["services"][0]["ref"] == reference,
        "the ref as the label has it: {line}"
    );

    // A push over it says which version it displaced: the label, shortened by characters.
    let run = w.run(&["push", "v2", "--env", "staging"])?;
    run.expect(0)?;
    ensure!(
        run.stdout.contains(&format!("(was a{})", "é".repeat(11))),
        "the displaced version is named:\n{}",
        run.output()
    );
    w.expect_versions("staging", "v2")?;
    Ok(())
}
