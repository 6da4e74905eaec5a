//! The short strings of a service spec that name host resources — published ports
//! (`127.0.0.1:8080:80/tcp`) and volumes (`/srv/acme:/data:ro`) — read into their parts. One
//! reading serves the engine, which creates what they describe, and the host policy
//! ([`crate::policy`]), which decides whether an order may ask for it: were there two, an
//! order could be checked under one reading and run under the other.

/// One published port: `[host_ip:][host_port:]container_port[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    /// None: the engine picks a free ephemeral port.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

/// `8080`, `8080:80`, `127.0.0.1:8080:80`, each optionally with `/tcp` or `/udp`.
pub fn parse_port(s: &str) -> Result<PortMapping, String> {
    let bad = |why: &str| {
        format!("bad port {s:?}: {why} (expected [host_ip:][host_port:]container_port[/tcp|/udp])")
    };
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, proto @ ("tcp" | "udp" | "sctp"))) => (spec, proto.to_string()),
        Some(_) => return Err(bad("unknown protocol")),
        None => (s, "tcp".to_string()),
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(&format!("{p:?} is not a port number"))),
            Ok(n) => Ok(n),
        }
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (None, None, port(c)?),
        [h, c] => (None, Some(port(h)?), port(c)?),
        [ip, h, c] => {
            if ip.is_empty() || ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(bad(&format!("{ip:?} is not an IPv4 address")));
            }
            let host_port = if h.is_empty() { None } else { Some(port(h)?) };
            (Some(ip.to_string()), host_port, port(c)?)
        }
        _ => return Err(bad("too many ':'")),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// The port of a Caddy listen address: `:443`, `127.0.0.1:8443`, `[::1]:443`, `tcp/:443`.
/// Port ranges and unix sockets are not ours to ask for.
pub fn listen_port(listen: &str) -> Option<u16> {
    let addr = listen.strip_prefix("tcp/").unwrap_or(listen);
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `host:port` of an admin API, read into its parts; the host is a name or an address, never
/// a path or a URL (the agent builds the URL itself).
pub fn admin_address(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let plain = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    let bracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    (plain(host) || bracketed).then_some((host, port))
}

/// One volume of a service: `name:/path[:opts]` or `/host/path:/path[:opts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume<'a> {
    pub source: VolumeSource<'a>,
    pub target: &'a str,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSource<'a> {
    /// A volume the engine manages; it holds only what containers put in it.
    Named(&'a str),
    /// A directory or file of the host, bound into the container.
    HostPath(&'a str),
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "consistent",
    "cached",
    "delegated",
    "shared",
    "slave",
    "private",
    "rshared",
    "rslave",
    "rprivate",
];

/// Reads a volume string. A source that is not a plain volume name is a host path and must be
/// absolute: the engine would otherwise resolve `./x` or `~/x` against whatever directory it
/// runs in.
pub fn parse_volume(s: &str) -> Result<Volume<'_>, String> {
    let bad = |why: &str| {
        format!("bad volume {s:?}: {why} (expected name:/path or /host/path:/path, optional :ro)")
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] if opts.split(',').all(|o| VOLUME_OPTIONS.contains(&o)) => {
            (*src, *dst, *opts)
        }
        [_, _, _] => return Err(bad("unknown option (ro, rw, z, Z, nocopy, …)")),
        _ => return Err(bad("needs a source and a target")),
    };
    if source.is_empty() {
        return Err(bad("empty source"));
    }
    if !target.starts_with('/') {
        return Err(bad("the target must be an absolute path"));
    }
    let source = if is_volume_name(source) {
        VolumeSource::Named(source)
    } else if source.starts_with('/') {
        VolumeSource::HostPath(source)
    } else {
        return Err(bad(
            "the source is neither a volume name nor an absolute host path",
        ));
    };
    Ok(Volume {
        source,
        target,
        read_only: options.split(',').any(|o| o == "ro"),
    })
}

/// Whether a service's `network` names a user-defined network, one the engine can create and
/// where containers answer to aliases. `host`, `bridge`, `none` and `container:NAME` are
/// network modes instead: a container is put in one when created, and has no aliases there.
pub fn is_user_network(name: &str) -> bool {
    !matches!(name, "host" | "bridge" | "none" | "default") && !name.starts_with("container:")
}

/// The engine's rule for volume names.
fn is_volume_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caddy_addresses_read_or_refused() {
        let listen = [
            (":443", Some(443)),
            ("127.0.0.1:8443", Some(8443)),
            ("[::1]:443", Some(443)),
            ("tcp/:80", Some(80)),
            ("localhost:8000-8010", None),
            ("unix//run/caddy.sock", None),
            (":0", None),
            ("::1:443", None),
            ("443", None),
        ];
        for (input, want) in listen {
            assert_eq!(listen_port(input), want, "{input}");
        }
        let admin = [
            ("127.0.0.1:2019", Some(("127.0.0.1", 2019))),
            ("localhost:2019", Some(("localhost", 2019))),
            ("[::1]:2019", Some(("[::1]", 2019))),
            ("http://127.0.0.1:2019", None),
            ("127.0.0.1:2019/config", None),
            ("host@evil:2019", None),
            (":2019", None),
            ("127.0.0.1", None),
        ];
        for (input, want) in admin {
            assert_eq!(admin_address(input), want, "{input}");
        }
    }

    #[test]
    fn ports_parse_or_explain() {
        let ok = [
            ("8080", None, None, 8080, "tcp"),
            ("8080:80", None, Some(8080), 80, "tcp"),
            (
                "127.0.0.1:8080:8080",
                Some("127.0.0.1"),
                Some(8080),
                8080,
                "tcp",
            ),
            ("127.0.0.1::8080", Some("127.0.0.1"), None, 8080, "tcp"),
            ("53:53/udp", None, Some(53), 53, "udp"),
        ];
        for (input, ip, host, container, proto) in ok {
            let p = parse_port(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.host_ip.as_deref(), ip, "{input}");
            assert_eq!(p.host_port, host, "{input}");
            assert_eq!(p.container_port, container, "{input}");
            assert_eq!(p.protocol, proto, "{input}");
        }
        for bad in [
            "",
            "http",
            "0",
            "70000",
            "8080:",
            "a:b:c:d",
            "8080/ftp",
            "localhost:80:80",
            ":80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn volumes_parse_or_explain() {
        use VolumeSource::*;
        let ok = [
            ("acme-data:/data", Named("acme-data"), "/data", false),
            ("/srv/x:/x", HostPath("/srv/x"), "/x", false),
            ("/srv/x:/x:ro", HostPath("/srv/x"), "/x", true),
            ("v:/data:rw", Named("v"), "/data", false),
            ("/srv/x:/x:ro,Z", HostPath("/srv/x"), "/x", true),
            ("/:/host", HostPath("/"), "/host", false),
        ];
        for (input, source, target, read_only) in ok {
            let v = parse_volume(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                v,
                Volume {
                    source,
                    target,
                    read_only
                },
                "{input}"
            );
        }
        for bad in [
            "data",
            ":/data",
            "v:data",
            "v:/data:rx",
            "v:/data:ro,",
            "a:b:c:d",
            "./x:/x",
            "~/x:/x",
            "srv/x:/x",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}
