//! NBD URIs (NetworkBlockDevice/nbd `doc/uri.md`): `nbd://HOST[:PORT]/EXPORT` and
//! `nbd+unix:///EXPORT?socket=PATH`. The export name is the path without its leading slash,
//! percent-decoded; an empty name asks for the server's default export.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use std::fmt;
use std::path::PathBuf;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an export is and what it is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    /// How to reach the server.
    pub endpoint: Endpoint,
    /// The export name ("" for the default export).
    pub export: String,
}

/// A server's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (made absolute, so the URI names the same socket from any directory).
    Unix(PathBuf),
    /// TCP host (a name, an IPv4 address, or an IPv6 address without brackets) and port.
    Tcp(String, u16),
}

/// Whether a command-line DEVICE is meant as an NBD URI (rather than a path).
pub fn is_uri(spec: &str) -> bool {
    spec.split_once("://")
        .is_some_and(|(scheme, _)| scheme.starts_with("nbd"))
}

// Characters escaped when an export name or socket path is written back into a URI.
const ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'?')
    .add(b'#')
    .add(b'&')
    .add(b'=');

impl NbdUri {
    /// Parses a URI, saying what is wrong and what a good one looks like.
    pub fn parse(spec: &str) -> Result<NbdUri, String> {
        let (scheme, rest) = spec
            .split_once("://")
            .ok_or_else(|| format!("{spec}: not a URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)"))?;
        if rest.contains('#') {
            return Err(format!(
                "{spec}: a fragment (#...) has no meaning in an NBD URI (write # in a path as %23)"
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| format!("{spec}: the export name is not UTF-8 after percent-decoding"))?
            .into_owned();
        let mut socket = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| format!("{spec}: query value of {k:?} is not UTF-8"))?;
            match k {
                "socket" => socket = Some(v.into_owned()),
                "tls-certificates" | "tls-verify-peer" | "tls-psk-file" | "tls-username" => {
                    return Err(format!(
                        "{spec}: {k} is for TLS (nbds URIs), which lostwrite does not speak as a client yet"
                    ))
                }
                _ => return Err(format!("{spec}: unknown query parameter {k:?} (only socket= is understood)")),
            }
        }
        let endpoint = match scheme {
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(format!(
                        "{spec}: a nbd+unix URI has no host (three slashes: nbd+unix:///EXPORT?socket=PATH)"
                    ));
                }
                let s = socket.ok_or_else(|| {
                    format!("{spec}: a nbd+unix URI needs ?socket=PATH naming the server's unix socket")
                })?;
                let p = std::path::absolute(&s).map_err(|e| format!("{spec}: socket path {s:?}: {e}"))?;
                Endpoint::Unix(p)
            }
            "nbd" => {
                if socket.is_some() {
                    return Err(format!("{spec}: ?socket= belongs to nbd+unix URIs; for TCP give nbd://HOST[:PORT]/EXPORT"));
                }
                let (host, port) = split_host_port(authority).map_err(|e| format!("{spec}: {e}"))?;
                Endpoint::Tcp(host, port)
            }
            "nbds" | "nbds+unix" => {
                return Err(format!(
                    "{spec}: TLS to the upstream server (nbds) is not supported as a client yet; export it without TLS on a local socket (nbd+unix)"
                ))
            }
            "nbd+vsock" | "nbds+vsock" => {
                return Err(format!("{spec}: vsock transports are not supported; use nbd+unix or nbd"))
            }
            other => {
                return Err(format!(
                    "{spec}: unknown scheme {other:?} (expected nbd or nbd+unix)"
                ))
            }
        };
        Ok(NbdUri { endpoint, export })
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    if authority.contains('@') {
        return Err("a user name in the URI has no meaning for NBD".into());
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address opened with [ must close with ]")?;
        match after {
            "" => (h, None),
            a => (
                h,
                Some(a.strip_prefix(':').ok_or_else(|| {
                    format!("{a:?} after the IPv6 address: only :PORT may follow ]")
                })?),
            ),
        }
    } else if authority.matches(':').count() > 1 {
        return Err("an IPv6 address goes in brackets: nbd://[::1]:10809/EXPORT".into());
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(
            "a nbd:// URI needs a host (for a unix socket use nbd+unix:///EXPORT?socket=PATH)"
                .into(),
        );
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

impl fmt::Display for NbdUri {
    /// The normalised form: the one a ledger records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let export = utf8_percent_encode(&self.export, ESCAPE);
        match &self.endpoint {
            Endpoint::Unix(p) => write!(
                f,
                "nbd+unix:///{export}?socket={}",
                utf8_percent_encode(&p.to_string_lossy(), ESCAPE)
            ),
            Endpoint::Tcp(h, port) if h.contains(':') => write!(f, "nbd://[{h}]:{port}/{export}"),
            Endpoint::Tcp(h, port) => write!(f, "nbd://{h}:{port}/{export}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_clients_use_and_round_trips() {
        let u = NbdUri::parse("nbd+unix:///disk%201?socket=/run/q.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/run/q.sock".into()));
        assert_eq!(u.export, "disk 1");
        assert_eq!(NbdUri::parse(&u.to_string()).unwrap(), u);
        let u = NbdUri::parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.export, "");
        let t = NbdUri::parse("nbd://example.org/vm").unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp("example.org".into(), 10809));
        let t = NbdUri::parse("nbd://[::1]:10900").unwrap();
        assert_eq!(t.endpoint, Endpoint::Tcp("::1".into(), 10900));
        assert_eq!(t.to_string(), "nbd://[::1]:10900/");
        let rel = NbdUri::parse("nbd+unix:///?socket=rel.sock").unwrap();
        assert!(matches!(rel.endpoint, Endpoint::Unix(p) if p.is_absolute()));
    }

    #[test]
    fn refuses_what_it_cannot_honour_with_a_reason() {
        for (bad, why) in [
            ("nbd+unix:///x", "needs ?socket="),
            ("nbd+unix://host/x?socket=/s", "has no host"),
            ("nbd://:10809/x", "needs a host"),
            ("nbd://h:99999/x", "port"),
            ("nbds://h/x", "TLS"),
            ("nbd://h/x?socket=/s", "belongs to nbd+unix"),
            ("nbd://h/x?bogus=1", "unknown query"),
            ("http://h/x", "unknown scheme"),
            ("nbd://::1/x", "brackets"),
            ("nbd://[::1]x/e", "only :PORT"),
            ("nbd+unix:///e?socket=/a#b", "fragment"),
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(is_uri("nbd+unix:///?socket=/s") && is_uri("nbds://h") && !is_uri("/dev/sda"));
    }
}
