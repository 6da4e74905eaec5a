//! The lookup end to end on real files and real helper programs (small `sh` scripts in a temp
//! dir, found through an explicit search path, so no test touches the process's `PATH`).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;

use base64::Engine as _;

use super::*;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(config: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Setup { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// `docker-credential-<name>`: a shell script with `body`.
    fn helper(&self, name: &str, body: &str) {
        let path = self
            .dir
            .path()
            .join("bin")
            .join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn lookup(&self, registry: &str) -> Result<Option<Found>, AuthError> {
        DockerConfig::at(self.config_path())
            .search_helpers_in(self.dir.path().join("bin"))
            .with_timeout(Duration::from_secs(10))
            .credentials(registry)
    }

    /// The lookup as one line: `user:password from <source> as <server>`, `anonymous`, or the
    /// error's text.
    fn describe(&self, registry: &str) -> String {
        match self.lookup(registry) {
            Ok(None) => "anonymous".into(),
            Ok(Some(f)) => {
                let what = match f.credential {
                    Credential::Basic { username, password } => format!("{username}:{password}"),
                    Credential::IdentityToken(t) => format!("token {t}"),
                };
                format!("{what} from {} as {}", f.source, f.server)
            }
            Err(e) => e.to_string(),
        }
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn auths_entries_are_found_under_any_spelling_of_the_registry() {
    let s = Setup::new(&format!(
        r#"{{"auths": {{
            "https://registry.example.com/v1/": {{"auth": "{}"}},
            "127.0.0.1:5000": {{"username": "u", "password": "p"}},
            "registry-1.docker.io": {{"auth": "{}"}},
            "ghcr.io": {{"auth": "", "username": "g", "password": "h"}},
            "unpadded.example": {{"auth": "{}"}},
            "acr.example": {{"auth": "{}", "identitytoken": "refresh-me"}},
            "store-placeholder.example": {{}},
            "broken": {{"auth": "!!!"}},
            "no-colon": {{"auth": "{}"}}}},
          "HttpHeaders": {{"X-Other": "Docker's own keys are left alone"}}}}"#,
        b64("bob:s3:cret"),
        b64("hub:pw"),
        b64("ab:c").trim_end_matches('='),
        b64("00000000-0000-0000-0000-000000000000:"),
        b64("nocolon")
    ));
    let entry = |what: &str, key: &str| format!("{what} from auths entry {key:?} as {key}");
    let table = [
        (
            "registry.example.com",
            entry("bob:s3:cret", "https://registry.example.com/v1/"),
        ),
        ("127.0.0.1:5000", entry("u:p", "127.0.0.1:5000")),
        // Docker Hub's aliases are one registry, whichever spelling each side uses.
        ("docker.io", entry("hub:pw", "registry-1.docker.io")),
        (DOCKER_HUB_SERVER, entry("hub:pw", "registry-1.docker.io")),
        (
            "registry-1.docker.io",
            entry("hub:pw", "registry-1.docker.io"),
        ),
        ("ghcr.io", entry("g:h", "ghcr.io")),
        ("unpadded.example", entry("ab:c", "unpadded.example")),
        ("acr.example", entry("token refresh-me", "acr.example")),
        ("store-placeholder.example", "anonymous".into()),
        ("other.example.com", "anonymous".into()),
    ];
    for (registry, want) in table {
        assert_eq!(s.describe(registry), want, "{registry}");
    }
    let path = s.config_path().display().to_string();
    for (registry, why) in [
        ("broken", "\"auth\" is not base64"),
        ("no-colon", "\"auth\" does not decode to user:password"),
    ] {
        let got = s.describe(registry);
        assert!(
            got.starts_with(&format!(
                "the Docker config {path}: auths entry {registry:?} for {registry}: {why}"
            )),
            "{got}"
        );
    }
}

#[test]
fn a_missing_config_is_anonymous_and_a_bad_one_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = DockerConfig::at(dir.path().join("nope/config.json"));
    assert!(missing.credentials("127.0.0.1:5000").unwrap().is_none());

    let s = Setup::new("{\"auths\": [");
    let got = s.describe("127.0.0.1:5000");
    let path = s.config_path().display().to_string();
    assert!(
        got.starts_with(&format!("the Docker config {path} is not valid: ")),
        "{got}"
    );

    // A directory where the file should be: unreadable, not silently anonymous.
    let got = DockerConfig::at(dir.path())
        .credentials("127.0.0.1:5000")
        .unwrap_err()
        .to_string();
    assert!(got.starts_with("cannot read the Docker config "), "{got}");
}

/// A helper that answers `user-<its name>` / `pw-for-<what it read on stdin>`.
const ECHO_HELPER: &str = r#"test "$1" = get || exit 9
read -r server
printf '{"ServerURL":"%s","Username":"user-%s","Secret":"pw-for-%s"}' "$server" "${0##*-}" "$server""#;

#[test]
fn cred_helpers_come_before_the_store_and_the_store_before_auths() {
    let s = Setup::new(&format!(
        r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{a}"}}, "ghcr.io": {{"auth": "{a}"}}}},
            "credsStore": "store",
            "credHelpers": {{"127.0.0.1:5000": "local", "https://quay.io": "quay", "empty.example": ""}}}}"#,
        a = b64("file:pw")
    ));
    s.helper("store", ECHO_HELPER);
    s.helper("local", ECHO_HELPER);
    s.helper("quay", ECHO_HELPER);
    let table = [
        (
            "127.0.0.1:5000",
            "user-local:pw-for-127.0.0.1:5000 from docker-credential-local (credHelpers) as 127.0.0.1:5000",
        ),
        // A credHelpers key matches under any spelling, like an auths key.
        (
            "quay.io",
            "user-quay:pw-for-quay.io from docker-credential-quay (credHelpers) as quay.io",
        ),
        // With a store, the store answers for every other registry; auths is not read.
        (
            "ghcr.io",
            "user-store:pw-for-ghcr.io from docker-credential-store (credsStore) as ghcr.io",
        ),
        (
            "empty.example",
            "user-store:pw-for-empty.example from docker-credential-store (credsStore) as empty.example",
        ),
        // Docker Hub is asked for as the Docker CLI asks for it.
        (
            "registry-1.docker.io",
            "user-store:pw-for-https://index.docker.io/v1/ from docker-credential-store (credsStore) as https://index.docker.io/v1/",
        ),
    ];
    for (registry, want) in table {
        assert_eq!(s.describe(registry), want, "{registry}");
    }
}

#[test]
fn a_store_without_credentials_for_a_registry_means_anonymous() {
    let s = Setup::new(r#"{"credsStore": "store"}"#);
    s.helper(
        "store",
        r#"read -r server
case "$server" in
  127.0.0.1:5000) echo '{"Username":"<token>","Secret":"refresh"}' ;;
  empty.example) echo '{"Username":"","Secret":""}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
    );
    assert_eq!(
        s.describe("127.0.0.1:5000"),
        "token refresh from docker-credential-store (credsStore) as 127.0.0.1:5000"
    );
    assert_eq!(s.describe("ghcr.io"), "anonymous");
    assert_eq!(s.describe("empty.example"), "anonymous");
}

#[test]
fn helper_failures_name_the_helper_and_the_registry() {
    let s = Setup::new(
        r#"{"credHelpers": {
            "fails.example": "fails", "garbage.example": "garbage", "silent.example": "silent",
            "missing.example": "missing", "slow.example": "slow", "evil.example": "../../bin/sh",
            "leaky.example": "leaky"}}"#,
    );
    s.helper("fails", "echo 'keychain is locked' >&2; exit 3");
    s.helper("garbage", "echo 'Username: bob'");
    s.helper("silent", "true");
    s.helper("leaky", r#"echo '{"Username":"bob","Secret":123456}'"#);
    s.helper("slow", "exec sleep 30");
    let path = s.config_path().display().to_string();
    let bin = s.dir.path().join("bin").display().to_string();
    let table = [
        ("fails.example", "fails", "it failed (exit status: 3): keychain is locked".to_string()),
        (
            "garbage.example",
            "garbage",
            "its reply is not the JSON {\"Username\": …, \"Secret\": …} expected: not JSON (at line 1, column 1)"
                .into(),
        ),
        (
            "silent.example",
            "silent",
            "its reply is not the JSON {\"Username\": …, \"Secret\": …} expected: it printed nothing"
                .into(),
        ),
        // The secret of a malformed reply is never repeated.
        (
            "leaky.example",
            "leaky",
            "its reply is not the JSON {\"Username\": …, \"Secret\": …} expected: a field is not a string"
                .into(),
        ),
        ("missing.example", "missing", format!("the program is not on PATH (searched {bin})")),
        (
            "evil.example",
            "../../bin/sh",
            "\"../../bin/sh\" is not a helper name (letters, digits, '.', '_' and '-' only)".into(),
        ),
    ];
    for (registry, name, problem) in table {
        assert_eq!(
            s.describe(registry),
            format!(
                "credential helper docker-credential-{name} (credHelpers in {path}) for {registry}: {problem}"
            ),
            "{registry}"
        );
    }
    let slow = DockerConfig::at(s.config_path())
        .search_helpers_in(s.dir.path().join("bin"))
        .with_timeout(Duration::from_millis(300))
        .credentials("slow.example")
        .unwrap_err()
        .to_string();
    assert!(
        slow.ends_with("for slow.example: it did not answer within 300ms and was killed"),
        "{slow}"
    );
}

#[test]
fn helper_replies_mean_credentials_none_or_a_problem() {
    let exit = |code: i32| ExitStatus::from_raw(code << 8);
    let describe = |r: Result<Option<Credential>, HelperProblem>| match r {
        Ok(Some(c)) => format!("{c:?}"),
        Ok(None) => "none".into(),
        Err(e) => e.to_string(),
    };
    let table: [(i32, &str, &str, &str); 8] = [
        (
            0,
            r#"{"Username":"u","Secret":"p"}"#,
            "",
            r#"Basic { username: "u", .. }"#,
        ),
        (
            0,
            r#"{"ServerURL":"x","Username":"<token>","Secret":"t"}"#,
            "",
            "IdentityToken(..)",
        ),
        (0, r#"{"Username":"u","Secret":""}"#, "", "none"),
        (1, "credentials not found in native keychain\n", "", "none"),
        (
            1,
            "error getting credentials",
            "",
            "it failed (exit status: 1): error getting credentials",
        ),
        (2, "out", "err", "it failed (exit status: 2): err"),
        (1, "", "", "it failed (exit status: 1): no message"),
        (
            0,
            r#"{"Username":"u"}"#,
            "",
            "its reply is not the JSON {\"Username\": …, \"Secret\": …} expected: missing field `Secret` at line 1 column 16",
        ),
    ];
    for (code, stdout, stderr, want) in table {
        let got = describe(helper::reply(
            exit(code),
            stdout.as_bytes(),
            stderr.as_bytes(),
        ));
        assert_eq!(got, want, "{code} {stdout:?} {stderr:?}");
    }
}

#[test]
fn repositories_name_their_registry() {
    let table = [
        ("127.0.0.1:5000/acme/web", "127.0.0.1:5000"),
        ("registry.example.com/acme/web", "registry.example.com"),
        ("localhost/web", "localhost"),
        ("acme/web", "docker.io"),
        ("web", "docker.io"),
    ];
    for (repo, want) in table {
        assert_eq!(registry_host(repo), want, "{repo}");
    }
}

#[test]
fn sources_choose_by_dockers_order() {
    let choice = |config: &str, registry: &str| match config::ConfigFile::parse(config)
        .unwrap()
        .choose(registry)
    {
        config::Choice::Anonymous => "anonymous".to_string(),
        config::Choice::Entry { key, .. } => format!("auths {key}"),
        config::Choice::Helper { name, named_by } => format!("{named_by} {name}"),
    };
    let table = [
        ("{}", "h:1", "anonymous"),
        (
            r#"{"auths": null, "credHelpers": null}"#,
            "h:1",
            "anonymous",
        ),
        (r#"{"auths": {"h:1": {}}}"#, "h:1", "auths h:1"),
        (
            r#"{"auths": {"http://h:1/x": {}}}"#,
            "h:1",
            "auths http://h:1/x",
        ),
        // The exact key wins over another spelling of the same registry.
        (
            r#"{"auths": {"https://h:1": {}, "h:1": {}}}"#,
            "h:1",
            "auths h:1",
        ),
        (
            r#"{"auths": {"h:1": {}}, "credsStore": ""}"#,
            "h:1",
            "auths h:1",
        ),
        (
            r#"{"auths": {"h:1": {}}, "credsStore": "s"}"#,
            "h:1",
            "credsStore s",
        ),
        (
            r#"{"credsStore": "s", "credHelpers": {"h:1": "c"}}"#,
            "h:1",
            "credHelpers c",
        ),
        (
            r#"{"credsStore": "s", "credHelpers": {"h:2": "c"}}"#,
            "h:1",
            "credsStore s",
        ),
        (r#"{"credHelpers": {"h:2": "c"}}"#, "h:1", "anonymous"),
        (
            r#"{"credHelpers": {"https://index.docker.io/v1/": "hub"}}"#,
            "registry-1.docker.io",
            "credHelpers hub",
        ),
    ];
    for (config, registry, want) in table {
        assert_eq!(choice(config, registry), want, "{config} {registry}");
    }
}

#[test]
fn secrets_are_never_in_debug_output() {
    let basic = Credential::Basic {
        username: "u".into(),
        password: "hunter2".into(),
    };
    let token = Credential::IdentityToken("hunter3".into());
    let found = Found {
        credential: basic.clone(),
        server: "s".into(),
        source: Source::Auths { key: "s".into() },
    };
    for text in [
        format!("{basic:?}"),
        format!("{token:?}"),
        format!("{found:?}"),
    ] {
        assert!(!text.contains("hunter"), "{text}");
    }
}
