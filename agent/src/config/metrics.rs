//! `[metrics]` in `agent.toml` (README, "Metrics"): where the agent's metrics go — a file for
//! node_exporter's textfile collector, rewritten every `interval`, and/or a plain HTTP listener
//! for Prometheus to scrape.
//!
//! Every check here runs while the file is deserialized, so its error carries the line and
//! column of the value (or of the `[metrics]` table, for a rule between keys) like a syntax error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How often the textfile is rewritten unless `interval` says otherwise: node_exporter's own
/// scrape interval is usually 15 s too.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// node_exporter's textfile collector reads only files whose names end so.
const TEXTFILE_SUFFIX: &str = ".prom";

/// Where the metrics go; nothing is exported when both are `None` (no `[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawMetrics")]
pub struct MetricsConfig {
    /// `textfile`: rewritten atomically every `interval` (relative paths are resolved against
    /// the config file's directory by [`super::AgentConfig::parse`]).
    pub textfile: Option<PathBuf>,
    pub interval: Duration,
    /// `listen`: `GET /metrics` over plain HTTP on this address.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            textfile: None,
            interval: DEFAULT_INTERVAL,
            listen: None,
        }
    }
}

impl MetricsConfig {
    pub fn is_enabled(&self) -> bool {
        self.textfile.is_some() || self.listen.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    textfile: Option<Textfile>,
    #[serde(default)]
    interval: Option<Interval>,
    #[serde(default)]
    listen: Option<Listen>,
    #[serde(default)]
    allow_remote: bool,
}

impl TryFrom<RawMetrics> for MetricsConfig {
    type Error = String;

    /// The rules between keys; each key's own value was checked as it was read.
    fn try_from(raw: RawMetrics) -> Result<MetricsConfig, String> {
        if raw.textfile.is_none() && raw.listen.is_none() {
            return Err(
                "[metrics] needs `textfile`, `listen` or both (leave the table out to export nothing)"
                    .into(),
            );
        }
        if raw.interval.is_some() && raw.textfile.is_none() {
            return Err(
                "[metrics] interval is how often the textfile is rewritten; set `textfile` too \
                 (a `listen` scrape always computes fresh figures)"
                    .into(),
            );
        }
        if let Some(Listen(addr)) = raw.listen {
            check_listen(addr, raw.allow_remote)?;
        } else if raw.allow_remote {
            return Err("[metrics] allow_remote applies to `listen`, which is not set".into());
        }
        Ok(MetricsConfig {
            textfile: raw.textfile.map(|Textfile(p)| p),
            interval: raw.interval.map_or(DEFAULT_INTERVAL, |Interval(d)| d),
            listen: raw.listen.map(|Listen(a)| a),
        })
    }
}

/// The metrics name the host's apps and services and how they fare, over plain HTTP with no
/// authentication: only loopback unless the operator says, with `allow_remote`, that another
/// address is meant.
fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!(
            "[metrics] listen = \"{addr}\": port 0 would pick a random port no Prometheus could find"
        ));
    }
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "[metrics] listen = \"{addr}\" is not a loopback address: the metrics are served without \
             authentication or TLS. Scrape through a local Prometheus, node_exporter or a proxy, or \
             add `allow_remote = true` to serve them on this address anyway"
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct Textfile(PathBuf);

impl<'de> Deserialize<'de> for Textfile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() > TEXTFILE_SUFFIX.len() && n.ends_with(TEXTFILE_SUFFIX));
        if !named {
            return Err(serde::de::Error::custom(format!(
                "textfile {:?} must be a file whose name ends in {TEXTFILE_SUFFIX}: node_exporter's \
                 textfile collector reads no other",
                path.display().to_string()
            )));
        }
        Ok(Textfile(path))
    }
}

#[derive(Debug)]
struct Interval(Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let d = proto::time::duration::deserialize(d)?;
        if d < Duration::from_secs(1) {
            return Err(serde::de::Error::custom(
                "interval must be at least 1s (every rewrite asks the engine about every service)",
            ));
        }
        Ok(Interval(d))
    }
}

#[derive(Debug)]
struct Listen(SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map(Listen).map_err(|_| {
            serde::de::Error::custom(format!(
                "listen = {s:?} must be an IP address and a port, e.g. \"127.0.0.1:9465\" or \"[::1]:9465\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{AgentConfig, ConfigError};
    use super::*;

    const BASE: &str =
        "host = \"h\"\nenv = \"prod\"\nallowed_signers = \"s\"\nallowed_images = [\"r/*\"]\n";

    fn parse(metrics: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(
            &format!("{BASE}\n[metrics]\n{metrics}\n"),
            Path::new("/etc/deploy-agent/agent.toml"),
        )
    }

    #[test]
    fn no_table_exports_nothing() {
        let c = AgentConfig::parse(BASE, Path::new("agent.toml")).unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert!(!c.metrics.is_enabled());
    }

    #[test]
    fn good_tables_are_read_with_defaults_and_resolved_paths() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        // ([metrics] body, textfile, interval in seconds, listen)
        let cases: &[(&str, Option<&str>, u64, Option<SocketAddr>)] = &[
            (
                "textfile = \"/var/lib/node_exporter/textfile_collector/deploy_agent.prom\"",
                Some("/var/lib/node_exporter/textfile_collector/deploy_agent.prom"),
                15,
                None,
            ),
            (
                "textfile = \"metrics/agent.prom\"\ninterval = \"1m\"",
                Some("/etc/deploy-agent/metrics/agent.prom"),
                60,
                None,
            ),
            (
                "listen = \"127.0.0.1:9465\"",
                None,
                15,
                addr("127.0.0.1:9465"),
            ),
            ("listen = \"[::1]:9465\"", None, 15, addr("[::1]:9465")),
            (
                "listen = \"10.0.0.5:9465\"\nallow_remote = true",
                None,
                15,
                addr("10.0.0.5:9465"),
            ),
            (
                "textfile = \"/run/a.prom\"\nlisten = \"127.0.0.2:9465\"",
                Some("/run/a.prom"),
                15,
                addr("127.0.0.2:9465"),
            ),
        ];
        for (body, textfile, interval, listen) in cases {
            let c = parse(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(
                c.metrics,
                MetricsConfig {
                    textfile: textfile.map(PathBuf::from),
                    interval: Duration::from_secs(*interval),
                    listen: *listen,
                },
                "{body}"
            );
        }
    }

    #[test]
    fn bad_tables_are_refused_with_a_location() {
        // ([metrics] body, line, column, fragment of the message); the table starts on line 6,
        // its first key on line 7.
        let cases: &[(&str, usize, usize, &str)] = &[
            ("", 6, 1, "needs `textfile`, `listen` or both"),
            ("port = 9465", 7, 1, "unknown field `port`"),
            ("listen = \"0.0.0.0:9465\"", 6, 1, "not a loopback address"),
            (
                "listen = \"192.0.2.1:9465\"\nallow_remote = false",
                6,
                1,
                "allow_remote = true",
            ),
            ("listen = \"127.0.0.1:0\"", 6, 1, "port 0"),
            (
                "listen = \"localhost:9465\"",
                7,
                10,
                "an IP address and a port",
            ),
            ("listen = \":9465\"", 7, 10, "an IP address and a port"),
            ("listen = 9465", 7, 10, "string"),
            (
                "textfile = \"/var/lib/metrics.txt\"",
                7,
                12,
                "ends in .prom",
            ),
            ("textfile = \"/var/lib/.prom\"", 7, 12, "ends in .prom"),
            (
                "textfile = \"/a.prom\"\ninterval = \"soon\"",
                8,
                12,
                "bad duration",
            ),
            (
                "textfile = \"/a.prom\"\ninterval = \"500ms\"",
                8,
                12,
                "at least 1s",
            ),
            (
                "listen = \"127.0.0.1:9465\"\ninterval = \"5s\"",
                6,
                1,
                "set `textfile` too",
            ),
            (
                "textfile = \"/a.prom\"\nallow_remote = true",
                6,
                1,
                "`listen`, which is not set",
            ),
        ];
        for (body, line, column, fragment) in cases {
            match parse(body) {
                Err(ConfigError::Syntax {
                    line: l,
                    column: c,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c), (*line, *column), "{body}: {message}");
                    assert!(message.contains(fragment), "{body}: {message}");
                }
                other => panic!("{body}: expected an error with a location, got {other:?}"),
            }
        }
    }
}
