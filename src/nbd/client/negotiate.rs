//! Opening an upstream: dialling the server a URI names ([`dial`]), the fixed-newstyle
//! handshake that selects the export with NBD_OPT_GO ([`negotiate`]), what it learns
//! ([`ExportInfo`]), and the errors both kinds of client return for a bad answer or a failed
//! request (`bad`, `nbd_error`).

use super::deadline::{deadline, show, timeout, Bounded, NEGOTIATION_SLICE};
use crate::nbd::proto::{self, opt, rep, tflags};
use crate::nbd::stream::Stream;
use crate::nbd::uri::{Endpoint, NbdUri};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;

/// Largest payload asked of a server that states no maximum (the spec's default).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// What the server said about the export during negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`proto::tflags`]).
    pub flags: u16,
    /// Minimum block size: offsets and lengths must be multiples of it.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest READ or WRITE payload.
    pub max_payload: u32,
}

impl ExportInfo {
    /// Whether the server advertises transmission flag `f`.
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

pub(super) fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Opens a connection to the server a URI names (TCP with Nagle off).
pub fn dial(uri: &NbdUri) -> io::Result<Stream> {
    match &uri.endpoint {
        Endpoint::Unix(p) => UnixStream::connect(p)
            .map(Stream::Unix)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", p.display()))),
        Endpoint::Tcp(h, port) => {
            let fail =
                |e: io::Error| io::Error::new(e.kind(), format!("connecting to {h}:{port}: {e}"));
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
            for a in (h.as_str(), *port).to_socket_addrs().map_err(fail)? {
                match TcpStream::connect_timeout(&a, timeout()) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        last = io::Error::new(
                            e.kind(),
                            format!(
                                "no answer within {} (the upstream timeout; --upstream-timeout or upstream_timeout = sets it)",
                                show(timeout())
                            ),
                        )
                    }
                    Err(e) => last = e,
                }
            }
            Err(fail(last))
        }
    }
}

/// Runs the fixed-newstyle handshake on a fresh connection and selects `export` with
/// NBD_OPT_GO, all within the upstream timeout. The stream is then in transmission, with no
/// read or write timeout set.
pub fn negotiate(s: &mut Stream, export: &str) -> io::Result<ExportInfo> {
    s.set_read_timeout(Some(NEGOTIATION_SLICE))?;
    s.set_write_timeout(Some(NEGOTIATION_SLICE))?;
    let (until, why) = deadline();
    let r = negotiate_by(&mut Bounded { s, until, why }, export);
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    r
}

fn negotiate_by(s: &mut Bounded, export: &str) -> io::Result<ExportInfo> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::TimedOut {
            format!("the server accepted the connection but sent no NBD greeting: {e}; check that it is an NBD server and that it is not stuck")
        } else {
            format!("reading the server greeting: {e}")
        };
        io::Error::new(e.kind(), msg)
    })?;
    if greeting[0..8] != proto::NBDMAGIC.to_be_bytes() {
        return Err(bad("not an NBD server (bad greeting magic)"));
    }
    if greeting[8..16] != proto::IHAVEOPT.to_be_bytes() {
        return Err(bad(
            "the server speaks oldstyle NBD, which has no export names or options; run it in newstyle mode",
        ));
    }
    let hflags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if hflags & proto::handshake_flags::FIXED_NEWSTYLE == 0 {
        return Err(bad("the server does not speak fixed newstyle NBD"));
    }
    let mut cf = proto::client_flags::FIXED_NEWSTYLE;
    if hflags & proto::handshake_flags::NO_ZEROES != 0 {
        cf |= proto::client_flags::NO_ZEROES;
    }
    s.write_all(&cf.to_be_bytes())?;
    if export.len() > proto::MAX_NAME {
        return Err(bad(format!(
            "export names are at most {} bytes",
            proto::MAX_NAME
        )));
    }
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    // One information request: the block-size constraints, which this client then honours.
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&proto::info::BLOCK_SIZE.to_be_bytes());
    let mut o = proto::IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&opt::GO.to_be_bytes());
    o.extend_from_slice(&(data.len() as u32).to_be_bytes());
    o.extend_from_slice(&data);
    s.write_all(&o)?;
    let mut info = ExportInfo {
        size: u64::MAX,
        flags: 0,
        min_block: 1,
        preferred_block: 4096,
        max_payload: DEFAULT_MAX_PAYLOAD,
    };
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("waiting for the answer to NBD_OPT_GO: {e}"),
            )
        })?;
        if h[0..8] != proto::OPT_REPLY_MAGIC.to_be_bytes() {
            return Err(bad("bad option reply magic from the server"));
        }
        let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
        if len > 1 << 16 {
            return Err(bad(format!("option reply of {len} bytes is too large")));
        }
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d)?;
        let info_type = (d.len() >= 2).then(|| u16::from_be_bytes([d[0], d[1]]));
        match kind {
            rep::INFO if info_type == Some(proto::info::EXPORT) && d.len() >= 12 => {
                info.size = u64::from_be_bytes(d[2..10].try_into().expect("8"));
                info.flags = u16::from_be_bytes([d[10], d[11]]);
            }
            rep::INFO if info_type == Some(proto::info::BLOCK_SIZE) && d.len() >= 14 => {
                let min = u32::from_be_bytes(d[2..6].try_into().expect("4"));
                let pref = u32::from_be_bytes(d[6..10].try_into().expect("4"));
                let max = u32::from_be_bytes(d[10..14].try_into().expect("4"));
                if !min.is_power_of_two() || min > 65536 || max < min {
                    return Err(bad(format!(
                        "the server's block sizes make no sense (minimum {min}, maximum {max})"
                    )));
                }
                info.min_block = min;
                info.preferred_block = pref.max(min);
                info.max_payload = max.min(DEFAULT_MAX_PAYLOAD) / min * min;
            }
            rep::INFO => {}
            rep::ACK => break,
            e => {
                let msg = String::from_utf8_lossy(&d);
                let why = match e {
                    rep::ERR_UNKNOWN => format!(
                        "the server has no export named {export:?} (list them with `nbdinfo --list URI`)"
                    ),
                    rep::ERR_TLS_REQD => {
                        "the server requires TLS, which lostwrite does not speak as a client yet".into()
                    }
                    rep::ERR_UNSUP => "the server does not support NBD_OPT_GO (too old)".into(),
                    rep::ERR_POLICY => format!("the server refused export {export:?} by policy"),
                    rep::ERR_SHUTDOWN => "the server is shutting down".into(),
                    other => format!("the server refused export {export:?} (reply {other:#x})"),
                };
                return Err(bad(if msg.trim().is_empty() {
                    why
                } else {
                    format!("{why}: {}", msg.trim())
                }));
            }
        }
    }
    if info.size == u64::MAX || info.flags & tflags::HAS_FLAGS == 0 {
        return Err(bad("the server did not give the export's size and flags"));
    }
    if info.size > i64::MAX as u64 || info.size % info.min_block as u64 != 0 {
        return Err(bad(format!(
            "the export's size of {} bytes is not a whole number of its {}-byte blocks (or too large)",
            info.size, info.min_block
        )));
    }
    Ok(info)
}

/// The error a failed request returns, saying which request failed.
pub(super) fn nbd_error(kind: u16, offset: u64, e: u32) -> io::Error {
    let os = crate::nbd::errno::io_error_of(e);
    io::Error::new(
        os.kind(),
        format!(
            "{} at offset {offset}: the server replied {os}",
            proto::cmd_name(kind)
        ),
    )
}
