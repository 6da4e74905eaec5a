//! A release (README, "Releases of several images"): the image every service of the app runs,
//! each pinned to a digest and remembered with the ref it was resolved from, plus the
//! migration's own image when it has one. Pure: which refs `push REF [--set S=REF]` resolves in
//! which repository ([`lookups`]), the release the registries' answers make ([`assemble`]),
//! the fields of an order that carries one ([`Release::image`], [`Release::images`],
//! [`Release::refs`], [`Release::revision`]), and releases read back from journals and statuses,
//! compared service by service ([`Digests`]).

use std::collections::{BTreeMap, BTreeSet};

use proto::order::{ImageRef, is_git_sha, short_digest};
use proto::wire::{AgentStatus, HistoryEntry, OutcomeKind};

use crate::config::DeployConfig;
use crate::resolve::{ResolveError, Resolved};

/// What identifies a release when releases are compared: every service's digest. Two releases
/// are the same when each service runs the same digest in both; refs are only names.
pub type Digests = BTreeMap<String, String>;

/// One service's part of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub image: ImageRef,
    /// The ref the image was resolved from: a tag, a git SHA, a digest.
    pub reference: String,
}

/// What a rollout puts on every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The release's ref: that of every service without one of its own (`--set`).
    pub reference: String,
    /// The image most services run (the first service's on a tie): an order's `image`, so a
    /// release of one image makes the same orders as before releases had several.
    pub image: ImageRef,
    pub services: BTreeMap<String, Pin>,
    /// `[migrate] image` at the release's ref, when the migration has a repository of its own.
    pub migrate_image: Option<ImageRef>,
}

impl Release {
    /// A release of `services` (at least one).
    pub fn new(
        reference: String,
        services: BTreeMap<String, Pin>,
        migrate_image: Option<ImageRef>,
    ) -> Option<Release> {
        let image = most_common(services.values().map(|p| &p.image))?.clone();
        Some(Release {
            reference,
            image,
            services,
            migrate_image,
        })
    }

    /// One image for every service, as a single-image deploy.toml (or `--to sha256:…`) has it.
    pub fn single(reference: &str, image: &ImageRef, services: &[&str]) -> Option<Release> {
        let pin = Pin {
            image: image.clone(),
            reference: reference.to_string(),
        };
        let services = services.iter().map(|s| (s.to_string(), pin.clone()));
        Release::new(reference.to_string(), services.collect(), None)
    }

    /// The release an order in a journal rolled out, for `services`; None when the order did
    /// not carry every one of them (it predates one), so it cannot be rolled out again as is.
    pub fn from_entry(e: &HistoryEntry, services: &[&str]) -> Option<Release> {
        let mut pins = BTreeMap::new();
        for s in services {
            if !e.services.iter().any(|x| x == s) {
                return None;
            }
            let pin = Pin {
                image: e.image_of(s).clone(),
                reference: e.reference_of(s).to_string(),
            };
            pins.insert(s.to_string(), pin);
        }
        Release::new(e.reference.clone(), pins, None)
    }

    pub fn digests(&self) -> Digests {
        self.each(|p| p.image.digest().to_string())
    }

    /// Services on another image than [`Release::image`]: an order's `images`.
    pub fn images(&self) -> BTreeMap<String, ImageRef> {
        let mut all = self.each(|p| p.image.clone());
        all.retain(|_, i| *i != self.image);
        all
    }

    /// Services on another ref than the release's (`--set`): an order's `refs`.
    pub fn refs(&self) -> BTreeMap<String, String> {
        let mut all = self.each(|p| p.reference.clone());
        all.retain(|_, r| *r != self.reference);
        all
    }

    /// One thing of every service's pin.
    fn each<T>(&self, of: impl Fn(&Pin) -> T) -> BTreeMap<String, T> {
        self.services
            .iter()
            .map(|(s, p)| (s.clone(), of(p)))
            .collect()
    }

    /// The git commit the release's ref names, when it is one (a full SHA, or the tag a SHA
    /// prefix picked): what `verify = { expect = "revision" }` expects of an image without an
    /// `org.opencontainers.image.revision` label.
    pub fn revision(&self) -> Option<String> {
        is_git_sha(&self.reference).then(|| self.reference.clone())
    }

    /// `v2 (0123456789ab)`, or with several images `v2 (api 0123456789ab, web 456789abcdef)`,
    /// and `web=v3` for a service on a ref of its own.
    pub fn describe(&self) -> String {
        let mut text = self.reference.clone();
        for (s, r) in self.refs() {
            text.push_str(&format!(" {s}={r}"));
        }
        format!("{text} ({})", describe_digests(&self.digests()))
    }
}

/// The digests of a release, short: one when every service runs the same, else each service's.
pub fn describe_digests(d: &Digests) -> String {
    let distinct: BTreeSet<&String> = d.values().collect();
    match distinct.iter().next() {
        Some(one) if distinct.len() == 1 => short_digest(one).to_string(),
        _ => d
            .iter()
            .map(|(s, digest)| format!("{s} {}", short_digest(digest)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The value most items have; on a tie the first of them. None for no items.
pub fn most_common<'a, T: Eq + 'a>(items: impl Iterator<Item = &'a T> + Clone) -> Option<&'a T> {
    let mut best: Option<(&T, usize)> = None;
    for item in items.clone() {
        let n = items.clone().filter(|x| *x == item).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((item, n));
        }
    }
    best.map(|(item, _)| item)
}

/// What differs between `have` and `want`, service by service: `web runs 456789abcdef, not
/// 0123456789ab`, `api missing`. Empty when they are the same release.
pub fn differences(have: &Digests, want: &Digests) -> Vec<String> {
    let services: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
    services
        .into_iter()
        .filter_map(|s| match (have.get(s), want.get(s)) {
            (Some(h), Some(w)) if h == w => None,
            (Some(h), Some(w)) => Some(format!(
                "{s} runs {}, not {}",
                short_digest(h),
                short_digest(w)
            )),
            (None, Some(_)) => Some(format!("{s} missing")),
            (Some(h), None) => Some(format!("{s} runs {} too", short_digest(h))),
            (None, None) => None,
        })
        .collect()
}

/// What `app`'s `services` run on a host, per its status (a service without a container is
/// left out).
pub fn current_digests(status: &AgentStatus, app: &str, services: &[&str]) -> Digests {
    status
        .services
        .iter()
        .filter(|s| s.app == app && services.contains(&s.service.as_str()))
        .filter_map(|s| Some((s.service.clone(), s.image.as_ref()?.digest().to_string())))
        .collect()
}

/// Whether a journal shows `release` succeeded for `app`: one order that ran exactly these
/// digests, service by service (the promotion gate, `requires`).
pub fn succeeded_in(history: &[HistoryEntry], app: &str, release: &Release) -> bool {
    let services: Vec<&str> = release.services.keys().map(String::as_str).collect();
    let want = release.digests();
    history.iter().any(|e| {
        // An exec proves nothing: it changes no service.
        e.app == app
            && e.action != proto::order::Action::Exec
            && e.outcome == Some(OutcomeKind::Succeeded)
            && Release::from_entry(e, &services).is_some_and(|r| r.digests() == want)
    })
}

/// The tags a fresh resolution proved, as (digest, tag): each image with the ref it was
/// resolved from, unless that ref was a digest. Only a release resolved now: a ref read from a
/// journal may have moved since.
pub fn resolved_tags(release: &Release) -> Vec<(String, String)> {
    let pins = release
        .services
        .values()
        .map(|p| (&p.image, p.reference.as_str()));
    let migrate = release
        .migrate_image
        .iter()
        .map(|i| (i, release.reference.as_str()));
    pins.chain(migrate)
        .filter(|(_, r)| !proto::order::is_digest(r))
        .map(|(i, r)| (i.digest().to_string(), r.to_string()))
        .collect()
}

/// Every digest a rollout of `release` may order, by repository: the release's own, and what
/// each host runs of `app` now (where a failure sends it back).
pub fn digests_to_tag(
    release: &Release,
    before: &[&AgentStatus],
    app: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let running = before
        .iter()
        .flat_map(|s| &s.services)
        .filter(|s| s.app == app)
        .filter_map(|s| s.image.as_ref());
    let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let ordered = release.services.values().map(|p| &p.image);
    for image in ordered.chain(&release.migrate_image).chain(running) {
        all.entry(image.repository().to_string())
            .or_default()
            .insert(image.digest().to_string());
    }
    all
}

/// One ref to resolve in one repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lookup {
    pub repository: String,
    pub reference: String,
}

/// `SERVICE=REF` from `--set`.
pub fn parse_set(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((s, r)) if !s.trim().is_empty() && !r.trim().is_empty() => {
            Ok((s.trim().to_string(), r.trim().to_string()))
        }
        _ => Err(format!("{text:?} is not SERVICE=REF")),
    }
}

/// What `push REF [--set S=REF…]` must ask the registries, each question once: REF in every
/// distinct repository of the services without a `--set` and, with `migration` (a push; a
/// rollback never migrates, so it needs no migrate image), of `[migrate] image`; each `--set`
/// ref in its service's repository. Err: a `--set` naming no service.
pub fn lookups(
    cfg: &DeployConfig,
    reference: &str,
    sets: &BTreeMap<String, String>,
    migration: bool,
) -> Result<Vec<Lookup>, String> {
    if let Some(unknown) = sets.keys().find(|s| !cfg.services.contains_key(*s)) {
        let known: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
        return Err(format!(
            "--set {unknown}=…: no service {unknown:?} in {} (services: {})",
            cfg.path.display(),
            known.join(", ")
        ));
    }
    let mut all = BTreeSet::new();
    for service in cfg.services.keys() {
        all.insert(lookup_of(cfg, reference, sets, service));
    }
    if let Some(repo) = cfg.migration_repository().filter(|_| migration) {
        all.insert(Lookup {
            repository: repo.to_string(),
            reference: reference.to_string(),
        });
    }
    Ok(all.into_iter().collect())
}

fn lookup_of(
    cfg: &DeployConfig,
    reference: &str,
    sets: &BTreeMap<String, String>,
    service: &str,
) -> Lookup {
    Lookup {
        repository: cfg.repository_of(service).to_string(),
        reference: sets
            .get(service)
            .map_or(reference, String::as_str)
            .to_string(),
    }
}

/// The release the registries' `answers` to [`lookups`] make (with the migrate image when it was
/// looked up). Refused (nothing is rolled out)
/// when any lookup failed, naming every repository that failed and why, or when REF, a SHA
/// prefix, picked different tags in different repositories (they would not be one commit).
pub fn assemble(
    cfg: &DeployConfig,
    reference: &str,
    sets: &BTreeMap<String, String>,
    answers: &[(Lookup, Result<Resolved, ResolveError>)],
) -> Result<Release, String> {
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(l, r)| {
            let e = r.as_ref().err()?;
            Some(format!("  {} ({}): {e}", l.repository, l.reference))
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "the release cannot be resolved in {} of {} repositories, so nothing was rolled out:\n{}",
            failed.len(),
            answers.len(),
            failed.join("\n")
        ));
    }
    let found = |l: &Lookup| {
        answers
            .iter()
            .find(|(x, _)| x == l)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let picked: BTreeSet<&str> = answers
        .iter()
        .filter(|(l, _)| l.reference == reference)
        .filter_map(|(_, r)| Some(r.as_ref().ok()?.reference.as_str()))
        .collect();
    if picked.len() > 1 {
        let each: Vec<String> = answers
            .iter()
            .filter(|(l, _)| l.reference == reference)
            .filter_map(|(l, r)| Some(format!("{} → {}", l.repository, r.as_ref().ok()?.reference)))
            .collect();
        return Err(format!(
            "{reference:?} picks different tags in different repositories ({}): give the full ref",
            each.join(", ")
        ));
    }
    let mut pins = BTreeMap::new();
    for service in cfg.services.keys() {
        let l = lookup_of(cfg, reference, sets, service);
        let r = found(&l)
            .ok_or_else(|| format!("no answer for {} in {}", l.reference, l.repository))?;
        let pin = Pin {
            image: r.image.clone(),
            reference: r.reference.clone(),
        };
        pins.insert(service.clone(), pin);
    }
    let migrate_image = cfg.migration_repository().and_then(|repo| {
        let l = Lookup {
            repository: repo.to_string(),
            reference: reference.to_string(),
        };
        Some(found(&l)?.image.clone())
    });
    let release_ref = picked.into_iter().next().unwrap_or(reference).to_string();
    Release::new(release_ref, pins, migrate_image).ok_or_else(|| "no services".to_string())
}

#[cfg(test)]
pub(crate) mod tests;
