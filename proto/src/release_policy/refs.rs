//! Release-tag rules (`[refs]`): which registry tags make an image a release on this host. The
//! order carries, for each digest, the tags the controller found pointing at it when it resolved
//! the release ([`Order::tags`]); the host admits a release only when every image of it has a
//! tag of an allowed form, a final one unless `prerelease = true`, and no `ephemeral-*` tag.
//!
//! The tags are the signer's word: the agent does not ask the registry. So `[refs]` keeps
//! mistakes off a host (a release candidate, a throwaway build pushed to prod), not a signer
//! who would lie about tags.

use std::fmt;
use std::str::FromStr;

use crate::order::{Order, short_digest};

/// Tags that mark a throwaway build (a branch preview, a test image): never a release where
/// `[refs]` exists, whatever other tags the image has.
pub const EPHEMERAL_PREFIX: &str = "ephemeral-";

/// A host's `[refs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRules {
    /// The forms a release tag may take; at least one.
    pub allow: Vec<Form>,
    /// Whether a semver pre-release (`v1.3.0-rc.1`) counts as a release.
    pub prerelease: bool,
}

/// A form of release tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    /// `X.Y.Z`, an optional leading `v`, optional `-pre.release` and `+build` (semver 2.0).
    Semver,
    /// `YYYY.MM.N`.
    Calver,
}

impl Form {
    pub const ALL: [Form; 2] = [Form::Semver, Form::Calver];

    pub fn name(self) -> &'static str {
        match self {
            Form::Semver => "semver",
            Form::Calver => "calver",
        }
    }

    fn admits(self, tag: &str) -> bool {
        match self {
            Form::Semver => semver(tag).is_some(),
            Form::Calver => is_calver(tag),
        }
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a tag form (semver, calver)")]
pub struct UnknownForm(pub String);

impl FromStr for Form {
    type Err = UnknownForm;
    fn from_str(s: &str) -> Result<Form, UnknownForm> {
        Form::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownForm(s.to_string()))
    }
}

/// Why a release is refused: the rule (`allow`, `prerelease` or `ephemeral`), the image it is
/// about and the tags that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefDenial {
    pub rule: &'static str,
    /// `services.web`, or `migrate_image`.
    pub image: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub why: String,
}

impl fmt::Display for RefDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[refs] {} denies {} ({}): {}",
            self.rule,
            self.image,
            short_digest(&self.digest),
            self.why
        )
    }
}

/// Checks every image of `order` — each service's, and the migration's own — against `rules`.
/// The first image refused wins.
pub fn check(rules: &RefRules, order: &Order) -> Result<(), RefDenial> {
    let services = order
        .services
        .keys()
        .map(|s| (format!("services.{s}"), order.image_of(s)));
    let migration = order
        .migrate_image
        .iter()
        .map(|i| ("migrate_image".to_string(), i));
    for (image, pinned) in services.chain(migration) {
        let digest = pinned.digest();
        let tags = order
            .tags
            .get(digest)
            .map(Vec::as_slice)
            .unwrap_or_default();
        check_image(rules, tags).map_err(|(rule, tags, why)| RefDenial {
            rule,
            image,
            digest: digest.to_string(),
            tags,
            why,
        })?;
    }
    Ok(())
}

type ImageDenial = (&'static str, Vec<String>, String);

fn check_image(rules: &RefRules, tags: &[String]) -> Result<(), ImageDenial> {
    let listed = |tags: &[&String]| {
        tags.iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let owned = |tags: &[&String]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let ephemeral: Vec<&String> = tags
        .iter()
        .filter(|t| t.starts_with(EPHEMERAL_PREFIX))
        .collect();
    if !ephemeral.is_empty() {
        return Err((
            "ephemeral",
            owned(&ephemeral),
            format!(
                "it is tagged {}: a throwaway build is never a release here",
                listed(&ephemeral)
            ),
        ));
    }
    let forms: Vec<&str> = rules.allow.iter().map(|f| f.name()).collect();
    let release_tags: Vec<&String> = tags
        .iter()
        .filter(|t| rules.allow.iter().any(|f| f.admits(t)))
        .collect();
    if release_tags.is_empty() {
        let all: Vec<&String> = tags.iter().collect();
        let found = if all.is_empty() {
            "the order names no tag of it".to_string()
        } else {
            format!("its tags are {}", listed(&all))
        };
        return Err((
            "allow",
            owned(&all),
            format!(
                "no tag of an allowed form ({}) names this image; {found}",
                forms.join(", ")
            ),
        ));
    }
    let is_final = |t: &&String| semver(t).is_none_or(|v| !v.prerelease);
    if !rules.prerelease && !release_tags.iter().any(is_final) {
        return Err((
            "prerelease",
            owned(&release_tags),
            format!(
                "its only release tags are pre-releases ({}), which this host does not take \
                 (prerelease = false)",
                listed(&release_tags)
            ),
        ));
    }
    Ok(())
}

/// Whether `tag` can matter to any rule: the controller looks up the digests of these tags
/// only.
pub fn examined(tag: &str) -> bool {
    tag.starts_with(EPHEMERAL_PREFIX) || Form::ALL.into_iter().any(|f| f.admits(tag))
}

/// What a semver tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Semver {
    pub prerelease: bool,
}

/// `tag` read as semver 2.0, with an optional leading `v`.
pub fn semver(tag: &str) -> Option<Semver> {
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let (tag, build) = match tag.split_once('+') {
        Some((t, b)) => (t, Some(b)),
        None => (tag, None),
    };
    let (core, pre) = match tag.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (tag, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.len() != 3 || !numbers.iter().all(|n| is_number(n)) {
        return None;
    }
    let identifiers_ok = |s: &str, numeric_strict: bool| {
        s.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && (!numeric_strict || !id.bytes().all(|b| b.is_ascii_digit()) || is_number(id))
        })
    };
    if pre.is_some_and(|p| !identifiers_ok(p, true))
        || build.is_some_and(|b| !identifiers_ok(b, false))
    {
        return None;
    }
    Some(Semver {
        prerelease: pre.is_some(),
    })
}

/// `YYYY.MM.N`: a four-digit year, a two-digit month from 01 to 12, a release number.
pub fn is_calver(tag: &str) -> bool {
    let parts: Vec<&str> = tag.split('.').collect();
    let [year, month, n] = parts.as_slice() else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    year.len() == 4
        && digits(year)
        && month.len() == 2
        && digits(month)
        && matches!(month.parse::<u8>(), Ok(1..=12))
        && is_number(n)
}

/// A decimal number without a leading zero (but `0` itself).
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

#[cfg(test)]
mod tests;
