//! The demo app's images: built once per content (static binary + Dockerfile) and kept in the
//! engine under `deployctl-demo:<version>-<content hash>`, then pushed to a registry with a fake
//! git SHA tag and a `vN` tag each. `deployctl demo` and the tests share the cache: whichever
//! runs first builds, the other finds the images.
//!
//! Test processes run in parallel (nextest), so the build is guarded by a lock file next to the
//! static binary; `docker build -t` only tags a finished image, so even two builders racing
//! (after a stale lock was broken) leave a complete image under the tag.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::command::{docker, run_with_timeout};
use crate::error::{Error, IoContext, Result};
use crate::registry::Registry;

/// The Dockerfile all versions are built from, with `@VERSION@`, `@MODE@`, `@MIGRATE_FAIL@` and
/// `@GIT_SHA@` placeholders.
pub const DOCKERFILE_TEMPLATE: &str = include_str!("../demo.Dockerfile");

/// The local repository the built images are cached under.
pub const LOCAL_REPO: &str = "deployctl-demo";

const TARGET: &str = "x86_64-unknown-linux-gnu";
const CARGO_TIMEOUT: Duration = Duration::from_secs(600);
const DOCKER_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Longer than a cold build of all images takes on a loaded 2-core machine.
const LOCK_WAIT: Duration = Duration::from_secs(400);
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// What a version of the demo app does when deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Serves, `/healthz` 200, migration succeeds.
    Healthy,
    /// Serves, but `/healthz` is always 500 and the HEALTHCHECK reports `unhealthy`.
    NeverHealthy,
    /// Prints a line and exits 3 about 0.3 s after start.
    CrashesAtStart,
    /// Serves healthily, but `/app migrate` exits 1 without writing anything.
    MigrationFails,
    /// Serves healthily for 0.3 s, then exits 1; the engine restarts it forever (a crash loop
    /// that a health check with `healthy_for = "0s"` lets through).
    CrashLoops,
}

struct Spec {
    version: &'static str,
    mode: &'static str,
    migrate_fail: bool,
    behaviour: Behaviour,
}

const SPECS: [Spec; 6] = [
    Spec {
        version: "v1",
        mode: "healthy",
        migrate_fail: false,
        behaviour: Behaviour::Healthy,
    },
    Spec {
        version: "v2",
        mode: "healthy",
        migrate_fail: false,
        behaviour: Behaviour::Healthy,
    },
    Spec {
        version: "v3",
        mode: "unhealthy",
        migrate_fail: false,
        behaviour: Behaviour::NeverHealthy,
    },
    Spec {
        version: "v4",
        mode: "crash",
        migrate_fail: false,
        behaviour: Behaviour::CrashesAtStart,
    },
    Spec {
        version: "v5",
        mode: "healthy",
        migrate_fail: true,
        behaviour: Behaviour::MigrationFails,
    },
    Spec {
        version: "v6",
        mode: "crash-later",
        migrate_fail: false,
        behaviour: Behaviour::CrashLoops,
    },
];

/// The fake git commit a version is "built from": 40 hex digits, the same on every run.
pub fn fake_git_sha(version: &str) -> String {
    hex(&Sha256::digest(
        format!("deployctl demo app {version}").as_bytes(),
    ))[..40]
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dockerfile(spec: &Spec) -> String {
    DOCKERFILE_TEMPLATE
        .replace("@VERSION@", spec.version)
        .replace("@MODE@", spec.mode)
        .replace("@MIGRATE_FAIL@", if spec.migrate_fail { "1" } else { "0" })
        .replace("@GIT_SHA@", &fake_git_sha(spec.version))
}

/// A demo image built into the local engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub version: String,
    pub behaviour: Behaviour,
    /// `deployctl-demo:v1-<content hash>`
    pub tag: String,
    /// The engine's image id, `sha256:…` (not a registry digest).
    pub id: String,
}

/// The workspace the demo app is built from: `$DEPLOYCTL_SOURCE_DIR`, else the one this crate
/// was compiled in; `None` when its sources are not there (e.g. an installed `deployctl`).
pub fn workspace_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DEPLOYCTL_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            here.parent().unwrap_or(here).to_path_buf()
        });
    dir.join("demoapp/Cargo.toml").is_file().then_some(dir)
}

/// Where the static demo app is built, and the image cache's lock lives: its own target dir, so
/// the outer build's lock and fingerprints are never touched.
fn static_target_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| workspace_dir().map(|ws| ws.join("target")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("demoapp-static")
}

/// The static `demoapp` binary, e.g. to run it on the host: `$DEPLOYCTL_DEMOAPP` if set, else
/// built (if stale) with cargo from [`workspace_dir`]. Once per process.
pub fn demoapp_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_binary().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Unexpected)
}

fn build_binary() -> Result<PathBuf> {
    if let Some(given) = std::env::var_os("DEPLOYCTL_DEMOAPP").map(PathBuf::from) {
        return if given.is_file() {
            Ok(given)
        } else {
            Err(Error::Prereq {
                what: format!("DEPLOYCTL_DEMOAPP={} (no such file)", given.display()),
                fix: "point DEPLOYCTL_DEMOAPP at a static demoapp binary, or unset it".into(),
            })
        };
    }
    let workspace = workspace_dir().ok_or_else(|| Error::Prereq {
        what: "deployctl's source tree, which the demo app is built from".into(),
        fix: "set DEPLOYCTL_SOURCE_DIR to a checkout, or DEPLOYCTL_DEMOAPP to a static demoapp binary"
            .into(),
    })?;
    let target_dir = static_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "demoapp",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        // It would override RUSTFLAGS; an outer `cargo` may have set it for us.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    run_with_timeout(&mut cmd, CARGO_TIMEOUT).map_err(|e| match e {
        Error::Command {
            command,
            status,
            output,
        } => Error::Command {
            command,
            status,
            output: format!(
                "{output}\n  (a static build needs libc6-dev: apt-get install -y libc6-dev)"
            ),
        },
        other => other,
    })?;
    let binary = target_dir.join(TARGET).join("release").join("demoapp");
    if !binary.is_file() {
        return Err(Error::Unexpected(format!(
            "cargo built demoapp but {} is missing",
            binary.display()
        )));
    }
    Ok(binary)
}

/// The five demo images in the local engine, built if their content changed. Once per process;
/// safe across processes.
pub fn build_demo_images() -> Result<Vec<LocalImage>> {
    static BUILT: OnceLock<std::result::Result<Vec<LocalImage>, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_images().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Unexpected)
}

fn build_images() -> Result<Vec<LocalImage>> {
    let binary = demoapp_binary()?;
    let bytes = std::fs::read(&binary).ctx(|| format!("reading {}", binary.display()))?;
    let binary_hash = hex(&Sha256::digest(&bytes));
    let planned: Vec<(&Spec, String, String)> = SPECS
        .iter()
        .map(|spec| {
            let text = dockerfile(spec);
            let content = hex(&Sha256::digest(format!("{binary_hash}\n{text}").as_bytes()));
            (
                spec,
                format!("{LOCAL_REPO}:{}-{}", spec.version, &content[..16]),
                text,
            )
        })
        .collect();
    let missing = |planned: &[(&Spec, String, String)]| -> Vec<usize> {
        (0..planned.len())
            .filter(|&i| !image_exists(&planned[i].1))
            .collect()
    };
    if !missing(&planned).is_empty() {
        let cache = static_target_dir();
        std::fs::create_dir_all(&cache).ctx(|| format!("creating {}", cache.display()))?;
        let _lock = BuildLock::acquire(&cache.join("images.lock"), LOCK_WAIT)?;
        // Another process may have built them while we waited.
        let todo = missing(&planned);
        if !todo.is_empty() {
            let context = tempfile::Builder::new()
                .prefix("image-context-")
                .tempdir_in(&cache)
                .ctx(|| "creating a build context".into())?;
            std::fs::write(context.path().join("demoapp"), &bytes)
                .ctx(|| "copying demoapp".into())?;
            set_executable(&context.path().join("demoapp"))?;
            let builds: Vec<_> = todo
                .iter()
                .map(|&i| {
                    let (spec, tag, text) = &planned[i];
                    let file = context.path().join(format!("Dockerfile.{}", spec.version));
                    let ctx_dir = context.path().to_path_buf();
                    let tag = tag.clone();
                    let write =
                        std::fs::write(&file, text).ctx(|| format!("writing {}", file.display()));
                    // Builds run in parallel: each takes ~1 s per Dockerfile step of engine
                    // latency here, not CPU.
                    thread::spawn(move || -> Result<()> {
                        write?;
                        let mut cmd = Command::new("docker");
                        cmd.arg("build")
                            .arg("-q")
                            .arg("-f")
                            .arg(&file)
                            .arg("-t")
                            .arg(&tag)
                            .arg(&ctx_dir);
                        run_with_timeout(&mut cmd, DOCKER_BUILD_TIMEOUT).map(drop)
                    })
                })
                .collect();
            for build in builds {
                build
                    .join()
                    .map_err(|_| Error::Unexpected("an image build thread panicked".into()))??;
            }
            let current: Vec<&str> = planned.iter().map(|(_, tag, _)| tag.as_str()).collect();
            prune_stale_images(&current);
        }
    }
    let tags: Vec<&str> = planned.iter().map(|(_, tag, _)| tag.as_str()).collect();
    let mut args = vec!["image", "inspect", "--format", "{{.Id}}"];
    args.extend(&tags);
    let ids: Vec<String> = docker(&args)?
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if ids.len() != planned.len() {
        return Err(Error::Unexpected(format!(
            "docker image inspect gave {} ids for {} images",
            ids.len(),
            planned.len()
        )));
    }
    Ok(planned
        .iter()
        .zip(ids)
        .map(|((spec, tag, _), id)| LocalImage {
            version: spec.version.to_string(),
            behaviour: spec.behaviour,
            tag: tag.clone(),
            id,
        })
        .collect())
}

/// A demo version rebuilt with more Dockerfile instructions after `FROM` it (`ENV`, `LABEL`):
/// the same app answering other text on `/version`, or saying it was built from another commit.
/// Cached in the engine by content like the versions themselves, and pruned with them.
pub fn derive_image(base: &LocalImage, instructions: &str) -> Result<LocalImage> {
    let text = format!("FROM {}\n{instructions}\n", base.tag);
    let content = hex(&Sha256::digest(format!("{}\n{text}", base.id).as_bytes()));
    let tag = format!("{}-derived-{}", base.tag, &content[..16]);
    if !image_exists(&tag) {
        let cache = static_target_dir();
        std::fs::create_dir_all(&cache).ctx(|| format!("creating {}", cache.display()))?;
        let context = tempfile::Builder::new()
            .prefix("derived-context-")
            .tempdir_in(&cache)
            .ctx(|| "creating a build context".into())?;
        let file = context.path().join("Dockerfile");
        std::fs::write(&file, &text).ctx(|| format!("writing {}", file.display()))?;
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-q", "-t", &tag]).arg(context.path());
        run_with_timeout(&mut cmd, DOCKER_BUILD_TIMEOUT)?;
    }
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag])?;
    Ok(LocalImage {
        version: base.version.clone(),
        behaviour: base.behaviour,
        tag,
        id: id.trim().to_string(),
    })
}

/// Whether a cached image is one of `current`, or derived from one of them.
fn is_current(tag: &str, current: &[&str]) -> bool {
    current
        .iter()
        .any(|c| tag == *c || tag.starts_with(&format!("{c}-derived-")))
}

/// Removes cached demo images of older content, once nobody can still be using them: they were
/// built more than [`STALE_AFTER`] ago (a whole test run is far shorter). Best effort.
fn prune_stale_images(current: &[&str]) {
    let Ok(listing) = docker(&["images", LOCAL_REPO, "--format", "{{.Repository}}:{{.Tag}}"])
    else {
        return;
    };
    let cutoff = proto::Timestamp::now().minus(STALE_AFTER);
    for tag in listing
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_current(t, current))
    {
        let created = docker(&["image", "inspect", "--format", "{{.Created}}", tag]);
        let old = created
            .ok()
            .and_then(|c| proto::Timestamp::parse(c.trim()).ok())
            .is_some_and(|t| t < cutoff);
        if old {
            // Fails harmlessly for an image a container still uses.
            let _ = docker(&["rmi", tag]);
        }
    }
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", tag]).is_ok()
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", path.display()))
}

/// A lock file created with O_EXCL holding the owner's pid. A lock whose owner is gone, or
/// that is older than the wait itself, is stale and broken: the lock only saves duplicate
/// builds, correctness does not depend on it.
struct BuildLock {
    path: PathBuf,
}

impl BuildLock {
    fn acquire(path: &Path, wait: Duration) -> Result<BuildLock> {
        let start = Instant::now();
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(BuildLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::is_stale(path, wait) || start.elapsed() > wait {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("creating lock file {}", path.display()),
                        e,
                    ));
                }
            }
        }
    }

    fn is_stale(path: &Path, max_age: Duration) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let owner_alive = text
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        // An empty file is a lock being written right now; give it its age limit.
        let too_old = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        (!text.trim().is_empty() && !owner_alive) || too_old
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One demo version as pushed to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoImage {
    /// `v1` … `v6`; also what `/version` answers.
    pub version: String,
    pub behaviour: Behaviour,
    /// The fake 40-hex git SHA; also a tag in the registry.
    pub git_sha: String,
    /// The `vN` tag (same as `version`).
    pub tag: String,
    /// The registry's manifest digest, `sha256:…`.
    pub digest: String,
    /// `127.0.0.1:PORT/name`
    pub repository: String,
    /// `repository@digest`
    pub image_ref: proto::ImageRef,
    /// The engine's id of the cached local image it was pushed from.
    pub local_id: String,
}

impl DemoImage {
    /// `127.0.0.1:PORT/name@sha256:…`, what `docker pull` takes.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// The five demo versions in one registry repository.
#[derive(Debug, Clone)]
pub struct DemoImages {
    repository: String,
    images: Vec<DemoImage>,
    /// The registry's [`Registry::docker_config_dir`], for later pushes.
    docker_config: Option<PathBuf>,
}

impl DemoImages {
    /// Builds the images if needed, pushes them all to `registry` as repository `repo_name`
    /// (tags: the fake git SHA and `vN`), and leaves the engine with no reference to the
    /// pushed names, so deploying one really pulls it.
    pub fn publish(registry: &Registry, repo_name: &str) -> Result<DemoImages> {
        Self::publish_images(registry, repo_name, &build_demo_images()?)
    }

    /// Like [`Self::publish`], each version rebuilt first with `instructions(version)` added
    /// ([`derive_image`]): e.g. a second repository of the same versions with other digests.
    pub fn publish_derived(
        registry: &Registry,
        repo_name: &str,
        instructions: impl Fn(&LocalImage) -> String,
    ) -> Result<DemoImages> {
        let local = build_demo_images()?
            .iter()
            .map(|base| derive_image(base, &instructions(base)))
            .collect::<Result<Vec<_>>>()?;
        Self::publish_images(registry, repo_name, &local)
    }

    fn publish_images(
        registry: &Registry,
        repo_name: &str,
        local: &[LocalImage],
    ) -> Result<DemoImages> {
        let repository = registry.repo(repo_name);
        let mut pushed_tags = Vec::new();
        for image in local {
            for tag in [fake_git_sha(&image.version), image.version.clone()] {
                let name = format!("{repository}:{tag}");
                docker(&["tag", &image.id, &name])?;
                pushed_tags.push(name);
            }
        }
        let docker_config = registry.docker_config_dir();
        let out = run_with_timeout(
            docker_cli(docker_config.as_deref()).args(["push", "--all-tags", &repository]),
            PUSH_TIMEOUT,
        );
        let mut rmi = vec!["rmi"];
        rmi.extend(pushed_tags.iter().map(String::as_str));
        let untagged = docker(&rmi);
        let digests = parse_push_digests(&out?);
        untagged?;
        let mut images = Vec::new();
        for image in local {
            let git_sha = fake_git_sha(&image.version);
            let digest = digests
                .iter()
                .find(|(tag, _)| *tag == image.version)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| {
                    Error::Unexpected(format!(
                        "docker push printed no digest for {}",
                        image.version
                    ))
                })?;
            if !digests
                .iter()
                .any(|(tag, d)| *tag == git_sha && *d == digest)
            {
                return Err(Error::Unexpected(format!(
                    "tags {} and {git_sha} got different digests",
                    image.version
                )));
            }
            let image_ref = proto::ImageRef::new(&repository, &digest)
                .map_err(|e| Error::Unexpected(e.to_string()))?;
            images.push(DemoImage {
                version: image.version.clone(),
                behaviour: image.behaviour,
                git_sha,
                tag: image.version.clone(),
                digest,
                repository: repository.clone(),
                image_ref,
                local_id: image.id.clone(),
            });
        }
        Ok(DemoImages {
            repository,
            images,
            docker_config,
        })
    }

    /// Version `n` (1–5). Panics on another number: that is a mistake in the caller itself.
    #[track_caller]
    pub fn v(&self, n: usize) -> &DemoImage {
        match n.checked_sub(1).and_then(|i| self.images.get(i)) {
            Some(image) => image,
            None => panic!("the demo images are v1..v{}, not v{n}", self.images.len()),
        }
    }

    /// Pushes one more tag for version `n`'s image (e.g. a second SHA sharing a prefix with
    /// another, to test ambiguity), leaving no local name behind as [`Self::publish`] does.
    pub fn push_tag(&self, n: usize, tag: &str) -> Result<()> {
        let image = self
            .images
            .get(n.wrapping_sub(1))
            .ok_or_else(|| Error::Unexpected(format!("no demo image v{n}")))?;
        let local = LocalImage {
            version: image.version.clone(),
            behaviour: image.behaviour,
            tag: image.local_id.clone(),
            id: image.local_id.clone(),
        };
        let pushed = self.push_image(&local, tag)?;
        match pushed.digest == image.digest {
            true => Ok(()),
            false => Err(Error::Unexpected(format!(
                "pushing {tag} gave {}, expected {}",
                pushed.digest, image.digest
            ))),
        }
    }

    /// Pushes `local` (say a [`derive_image`]) into this repository as `tag`, leaving no local
    /// name behind as [`Self::publish`] does; the pushed image, its `git_sha` being `tag`.
    pub fn push_image(&self, local: &LocalImage, tag: &str) -> Result<DemoImage> {
        let name = format!("{}:{tag}", self.repository);
        docker(&["tag", &local.id, &name])?;
        let pushed = run_with_timeout(
            docker_cli(self.docker_config.as_deref()).args(["push", &name]),
            PUSH_TIMEOUT,
        );
        let untagged = docker(&["rmi", &name]);
        let digests = parse_push_digests(&pushed?);
        untagged?;
        let digest = match digests.first() {
            Some((_, digest)) => digest.clone(),
            None => {
                return Err(Error::Unexpected(format!(
                    "docker push printed no digest for {name}"
                )));
            }
        };
        let image_ref = proto::ImageRef::new(&self.repository, &digest)
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        Ok(DemoImage {
            version: local.version.clone(),
            behaviour: local.behaviour,
            git_sha: tag.to_string(),
            tag: tag.to_string(),
            digest,
            repository: self.repository.clone(),
            image_ref,
            local_id: local.id.clone(),
        })
    }

    pub fn all(&self) -> &[DemoImage] {
        &self.images
    }

    /// `127.0.0.1:PORT/name`
    pub fn repository(&self) -> &str {
        &self.repository
    }
}

/// `docker`, with `DOCKER_CONFIG` set to `config_dir` when given.
fn docker_cli(config_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new("docker");
    if let Some(dir) = config_dir {
        cmd.env("DOCKER_CONFIG", dir);
    }
    cmd
}

/// `v1: digest: sha256:… size: 527` lines of `docker push` → (tag, digest).
fn parse_push_digests(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let (tag, rest) = line.trim().split_once(": digest: ")?;
            let digest = rest.split_whitespace().next()?;
            proto::order::is_digest(digest).then(|| (tag.to_string(), digest.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_shas_are_distinct_40_hex_and_stable() {
        let shas: Vec<String> = SPECS.iter().map(|s| fake_git_sha(s.version)).collect();
        for sha in &shas {
            assert_eq!(sha.len(), 40);
            assert!(
                sha.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        let mut unique = shas.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), shas.len());
        assert_eq!(fake_git_sha("v1"), fake_git_sha("v1"));
    }

    #[test]
    fn dockerfiles_carry_each_versions_switches() {
        let cases = [
            ("v1", "DEMO_MODE=healthy DEMO_MIGRATE_FAIL=0"),
            ("v3", "DEMO_MODE=unhealthy DEMO_MIGRATE_FAIL=0"),
            ("v4", "DEMO_MODE=crash DEMO_MIGRATE_FAIL=0"),
            ("v5", "DEMO_MODE=healthy DEMO_MIGRATE_FAIL=1"),
            ("v6", "DEMO_MODE=crash-later DEMO_MIGRATE_FAIL=0"),
        ];
        for (version, switches) in cases {
            let spec = SPECS.iter().find(|s| s.version == version).unwrap();
            let text = dockerfile(spec);
            assert!(
                text.contains(&format!("DEMO_VERSION={version} {switches}")),
                "{text}"
            );
            assert!(text.contains(&fake_git_sha(version)));
            let instructions: String = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert!(!instructions.contains('@'), "placeholder left in {text}");
            assert!(text.contains("FROM scratch"));
        }
    }

    #[test]
    fn build_lock_is_exclusive_and_breaks_stale_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.lock");
        {
            let _held = BuildLock::acquire(&path, Duration::from_secs(5)).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                std::process::id().to_string()
            );
            // Held by a live process: a second taker waits for its whole wait, then breaks in.
            let start = Instant::now();
            let _second = BuildLock::acquire(&path, Duration::from_millis(300)).unwrap();
            assert!(start.elapsed() >= Duration::from_millis(300));
        }
        assert!(!path.exists(), "dropping the lock removes the file");
        // Left by a process that is gone: taken at once.
        std::fs::write(&path, "4294967").unwrap();
        let start = Instant::now();
        let _lock = BuildLock::acquire(&path, Duration::from_secs(60)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn derived_images_of_current_versions_are_kept() {
        let current = ["deployctl-demo:v1-aaaa", "deployctl-demo:v2-bbbb"];
        let table = [
            ("deployctl-demo:v1-aaaa", true),
            ("deployctl-demo:v1-aaaa-derived-0123", true),
            ("deployctl-demo:v1-old0", false),
            ("deployctl-demo:v1-old0-derived-0123", false),
            ("deployctl-demo:v1-aaaa0", false),
        ];
        for (tag, kept) in table {
            assert_eq!(is_current(tag, &current), kept, "{tag}");
        }
    }

    #[test]
    fn docker_creation_times_parse() {
        // `docker image inspect --format {{.Created}}`, as pruning reads it.
        let t = proto::Timestamp::parse("2026-11-23T18:07:09.443221155Z").unwrap();
        assert_eq!(t.unix_secs(), 1_795_457_229);
    }

    #[test]
    fn push_output() {
        let d1 = format!("sha256:{}", "a".repeat(64));
        let out = format!(
            "The push refers to repository [127.0.0.1:5000/demo]\n89c4cd8a3d93: Pushed\n\
             v1: digest: {d1} size: 527\nv2: digest: sha256:short size: 1\nnoise\n"
        );
        assert_eq!(parse_push_digests(&out), vec![("v1".to_string(), d1)]);
    }
}
