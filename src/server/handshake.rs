//! The server side of fixed-newstyle negotiation. Every option this server does not implement
//! gets NBD_REP_ERR_UNSUP and negotiation goes on (qemu 10 and libnbd send EXTENDED_HEADERS and
//! STRUCTURED_REPLY first); malformed input ends this connection only.

use crate::nbd::proto::{self, client_flags, handshake_flags, opt, rep, tflags, MAX_NAME};
use crate::service::Export;
use std::io::{self, Read, Write};
use std::sync::{Arc, RwLock};

/// Largest option payload accepted; larger ones end the connection (a string is at most 4096
/// bytes, so no valid option comes close).
pub const MAX_OPTION: u32 = 64 << 10;
/// Largest request payload served (the protocol's 32 MiB default).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The exports a server offers; the first one also answers to the empty (default) name. A
/// reload replaces the list ([`Exports::replace`]); negotiation holds no export but the one a
/// client chose, so an export the list drops is let go of by every connection not using it.
#[derive(Default)]
pub struct Exports(RwLock<Vec<Arc<Export>>>);

impl Exports {
    /// Offers `list`.
    pub fn new(list: Vec<Arc<Export>>) -> Exports {
        Exports(RwLock::new(list))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Export>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The export a client names.
    pub fn find(&self, name: &str) -> Option<Arc<Export>> {
        let list = self.read();
        if name.is_empty() {
            return list.first().cloned();
        }
        list.iter().find(|e| e.name() == name).cloned()
    }

    /// The names offered, in order.
    pub fn names(&self) -> Vec<String> {
        self.read().iter().map(|e| e.name().to_string()).collect()
    }

    /// Every export offered now.
    pub fn list(&self) -> Vec<Arc<Export>> {
        self.read().clone()
    }

    /// Offers `list` from now on.
    pub fn replace(&self, list: Vec<Arc<Export>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = list;
    }

    /// Runs `f` if `e` is still offered, with the list held so that it cannot change meanwhile;
    /// whether it ran.
    pub fn while_offered(&self, e: &Arc<Export>, f: impl FnOnce()) -> bool {
        let list = self.read();
        let offered = list.iter().any(|x| Arc::ptr_eq(x, e));
        if offered {
            f();
        }
        offered
    }
}

/// Transmission flags advertised for an export.
pub fn transmission_flags(e: &Export) -> u16 {
    let base = tflags::HAS_FLAGS
        | tflags::SEND_FLUSH
        | tflags::SEND_FUA
        | tflags::CAN_MULTI_CONN
        | tflags::SEND_CACHE;
    if e.read_only() {
        base | tflags::READ_ONLY
    } else {
        base | tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_FAST_ZERO
    }
}

/// How negotiation ended.
pub enum Outcome {
    /// Transmission begins on this export.
    Transmission(Arc<Export>),
    /// The connection is over, for the reason given.
    Closed(Ended),
    /// The client asked for TLS and got its ACK: run the TLS handshake, then call
    /// [`options`] again on the encrypted stream.
    StartTls,
}

/// Why negotiation ended without transmission; its `Display` is the sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    /// The client's flags in answer to the greeting hold some this server does not know.
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option did not start with the option magic.
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
    /// An option's data was longer than [`MAX_OPTION`].
    #[error("option {option} with {len} bytes of data")]
    OptionTooLong {
        /// The option.
        option: u32,
        /// Its data length.
        len: u32,
    },
    /// EXPORT_NAME (which has no error reply) before STARTTLS on a server that requires TLS.
    #[error("NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server")]
    ExportNameBeforeTls,
    /// The client sent ABORT.
    #[error("client aborted negotiation")]
    Aborted,
    /// EXPORT_NAME while the server stops.
    #[error("shutting down")]
    ShuttingDown,
    /// EXPORT_NAME with a name longer than the protocol allows (its length).
    #[error("NBD_OPT_EXPORT_NAME with a name of {0} bytes (NBD allows {MAX_NAME})")]
    NameTooLong(usize),
    /// EXPORT_NAME for an export this server does not have.
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
}

/// What the client's answer to the greeting allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// Negotiation goes on with options ([`options`]). `no_zeroes`: the client asked that the
    /// reply to EXPORT_NAME leave out its 124 bytes of zeroes.
    Options {
        /// NO_ZEROES was set.
        no_zeroes: bool,
    },
    /// The connection is over, for the reason given.
    Closed(Ended),
}

/// Where negotiation stands with TLS.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsState {
    /// The server has a certificate: TLS is offered, and required.
    pub required: bool,
    /// The connection is already encrypted.
    pub active: bool,
}

/// Runs the handshake on a fresh connection.
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    exports: &Exports,
    shutting_down: &dyn Fn() -> bool,
) -> io::Result<Outcome> {
    match greet(s)? {
        Greeting::Options { no_zeroes } => {
            options(s, exports, no_zeroes, TlsState::default(), shutting_down)
        }
        Greeting::Closed(why) => Ok(Outcome::Closed(why)),
    }
}

/// Sends the greeting and reads the client's flags: whether negotiation goes on, and how.
pub fn greet<S: Read + Write>(s: &mut S) -> io::Result<Greeting> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(
        &(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES).to_be_bytes(),
    );
    s.write_all(&greeting)?;
    let cflags = proto::read_u32(s)?;
    if cflags & !(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES) != 0 {
        return Ok(Greeting::Closed(Ended::UnknownClientFlags(cflags)));
    }
    Ok(Greeting::Options {
        no_zeroes: cflags & client_flags::NO_ZEROES != 0,
    })
}

/// Reads options until transmission, the end, or STARTTLS.
pub fn options<S: Read + Write>(
    s: &mut S,
    exports: &Exports,
    no_zeroes: bool,
    tls: TlsState,
    shutting_down: &dyn Fn() -> bool,
) -> io::Result<Outcome> {
    loop {
        let magic = proto::read_u64(s)?;
        if magic != proto::IHAVEOPT {
            return Ok(Outcome::Closed(Ended::BadOptionMagic(magic)));
        }
        let option = proto::read_u32(s)?;
        let len = proto::read_u32(s)?;
        if len > MAX_OPTION {
            return Ok(Outcome::Closed(Ended::OptionTooLong { option, len }));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        if option == opt::STARTTLS {
            let reply = if !tls.required {
                rep::ERR_UNSUP
            } else if tls.active || !data.is_empty() {
                rep::ERR_INVALID
            } else {
                proto::write_option_reply(s, option, rep::ACK, b"")?;
                return Ok(Outcome::StartTls);
            };
            proto::write_option_reply(s, option, reply, b"")?;
            continue;
        }
        if tls.required && !tls.active {
            // Nothing about the exports before TLS, not even their names.
            match option {
                opt::EXPORT_NAME => return Ok(Outcome::Closed(Ended::ExportNameBeforeTls)),
                opt::ABORT => {
                    let _ = proto::write_option_reply(s, option, rep::ACK, b"");
                    return Ok(Outcome::Closed(Ended::Aborted));
                }
                _ => {
                    proto::write_option_reply(s, option, rep::ERR_TLS_REQD, b"")?;
                    continue;
                }
            }
        }
        if shutting_down() && option == opt::EXPORT_NAME {
            // EXPORT_NAME has no error reply: the only refusal is to close.
            return Ok(Outcome::Closed(Ended::ShuttingDown));
        }
        if shutting_down() && option != opt::ABORT {
            proto::write_option_reply(s, option, rep::ERR_SHUTDOWN, b"")?;
            continue;
        }
        match option {
            opt::EXPORT_NAME if data.len() > MAX_NAME => {
                // No error reply exists for EXPORT_NAME: the refusal is to close.
                return Ok(Outcome::Closed(Ended::NameTooLong(data.len())));
            }
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                let Some(e) = exports.find(&name) else {
                    return Ok(Outcome::Closed(Ended::UnknownExport(name.into_owned())));
                };
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&e.size().to_be_bytes());
                b.extend_from_slice(&transmission_flags(&e).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b)?;
                return Ok(Outcome::Transmission(e));
            }
            opt::ABORT => {
                // The client may already be gone; that is fine.
                let _ = proto::write_option_reply(s, option, rep::ACK, b"");
                return Ok(Outcome::Closed(Ended::Aborted));
            }
            opt::LIST => {
                if !data.is_empty() {
                    proto::write_option_reply(s, option, rep::ERR_INVALID, b"")?;
                    continue;
                }
                for name in exports.names() {
                    let name = name.as_bytes();
                    let mut b = Vec::with_capacity(4 + name.len());
                    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    b.extend_from_slice(name);
                    proto::write_option_reply(s, option, rep::SERVER, &b)?;
                }
                proto::write_option_reply(s, option, rep::ACK, b"")?;
            }
            opt::INFO | opt::GO if name_length(&data).is_some_and(|n| n > MAX_NAME) => {
                // The spec's answer to a string over its limit, rather than a lookup.
                proto::write_option_reply(s, option, rep::ERR_TOO_BIG, b"")?;
            }
            opt::INFO | opt::GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    proto::write_option_reply(s, option, rep::ERR_INVALID, b"")?;
                    continue;
                };
                let Some(e) = exports.find(&name) else {
                    proto::write_option_reply(s, option, rep::ERR_UNKNOWN, b"")?;
                    continue;
                };
                proto::write_option_reply(
                    s,
                    option,
                    rep::INFO,
                    &proto::info_export(e.size(), transmission_flags(&e)),
                )?;
                // Any alignment is served (partial blocks are checksummed by read-modify-write)
                // unless the device itself demands more (an NBD upstream may); the preferred
                // size is the ledger's block size.
                let min = e.min_io().max(1);
                proto::write_option_reply(
                    s,
                    option,
                    rep::INFO,
                    &proto::info_block_size(min, e.block_size().max(min), MAX_PAYLOAD),
                )?;
                if requests.contains(&proto::info::DESCRIPTION) {
                    let mut b = proto::info::DESCRIPTION.to_be_bytes().to_vec();
                    b.extend_from_slice(b"lostwrite: writes are recorded in a ledger");
                    proto::write_option_reply(s, option, rep::INFO, &b)?;
                }
                proto::write_option_reply(s, option, rep::ACK, b"")?;
                if option == opt::GO {
                    return Ok(Outcome::Transmission(e));
                }
            }
            _ => proto::write_option_reply(s, option, rep::ERR_UNSUP, b"")?,
        }
    }
}

/// The name length an INFO/GO request states.
fn name_length(d: &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize)
}

/// Parses INFO/GO data: name length, name, request count, requests.
fn parse_info_request(d: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    if name_len > d.len().saturating_sub(6) {
        return None;
    }
    let name = std::str::from_utf8(&d[4..4 + name_len]).ok()?.to_string();
    let rest = &d[4 + name_len..];
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    if rest.len() != 2 + 2 * n {
        return None;
    }
    let reqs = rest[2..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, reqs))
}

#[cfg(test)]
mod tests {
    use super::{parse_info_request, Ended};

    #[test]
    fn reasons_to_close_read_as_they_always_did() {
        let s = |e: Ended| e.to_string();
        assert_eq!(s(Ended::UnknownClientFlags(4)), "unknown client flags 0x4");
        assert_eq!(s(Ended::BadOptionMagic(1)), "bad option magic 0x1");
        assert_eq!(
            s(Ended::OptionTooLong {
                option: 7,
                len: 70000
            }),
            "option 7 with 70000 bytes of data"
        );
        assert_eq!(
            s(Ended::NameTooLong(5000)),
            "NBD_OPT_EXPORT_NAME with a name of 5000 bytes (NBD allows 4096)"
        );
        assert_eq!(
            s(Ended::UnknownExport("x".into())),
            "NBD_OPT_EXPORT_NAME for unknown export \"x\""
        );
    }

    #[test]
    fn info_request_lengths_are_checked() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("abc".into(), vec![3])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut long = 100u32.to_be_bytes().to_vec();
        long.extend_from_slice(b"abc\0\0");
        assert_eq!(parse_info_request(&long), None);
        assert_eq!(parse_info_request(&[0, 0]), None);
        // Found by fuzzing: a name length of zero in 4 or 5 bytes of data.
        assert_eq!(parse_info_request(&[0, 0, 0, 0]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 0, 0]), None);
    }
}
