//! The NBD protocol's edge cases, with a hand-made client: options the server does not know,
//! commands and flags it must refuse, requests out of range or misaligned, DISC with requests in
//! flight, clients that vanish mid-write, and garbage on the socket. The service must answer with
//! the spec's error values, keep the connection where the spec allows, and keep serving.

use crate::helpers::*;
use crate::nbd_client::*;
use crate::service::Service;
use lostwrite::ledger::Access;
use lostwrite::nbd::proto::{self, cflags, cmd, opt, rep, tflags};
use std::io::{Read, Write};

const BS: usize = 4096;
const SIZE: u64 = 4 << 20;

fn setup() -> (Scratch, Service) {
    let s = Scratch::new(SIZE);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    (s, svc)
}

#[test]
fn unknown_options_get_err_unsup_and_negotiation_goes_on() {
    let (s, svc) = setup();
    let mut c = greet(&svc.socket);
    // What qemu 10 and libnbd send first, then nonsense.
    for o in [
        opt::EXTENDED_HEADERS,
        opt::STRUCTURED_REPLY,
        opt::SET_META_CONTEXT,
        99,
        0x7fff_ffff,
    ] {
        send_option(&mut c, o, b"some payload the server must skip");
        let (got, kind, _) = option_reply(&mut c);
        assert_eq!((got, kind), (o, rep::ERR_UNSUP), "option {o}");
    }
    // LIST names the export; INFO for an unknown export is ERR_UNKNOWN; a malformed INFO is
    // ERR_INVALID; negotiation still goes on.
    send_option(&mut c, opt::LIST, b"");
    let (_, kind, d) = option_reply(&mut c);
    assert_eq!(kind, rep::SERVER);
    assert_eq!(&d[..4], &0u32.to_be_bytes());
    assert_eq!(option_reply(&mut c).1, rep::ACK);
    send_option(&mut c, opt::INFO, &go_data("nope", &[]));
    assert_eq!(option_reply(&mut c).1, rep::ERR_UNKNOWN);
    send_option(&mut c, opt::INFO, &[0, 0, 0, 9, b'x']);
    assert_eq!(option_reply(&mut c).1, rep::ERR_INVALID);
    // Found by fuzzing: this used to panic the connection's thread.
    send_option(&mut c, opt::GO, &[0, 0, 0, 0]);
    assert_eq!(option_reply(&mut c).1, rep::ERR_INVALID);
    send_option(&mut c, opt::GO, &go_data("", &[proto::info::BLOCK_SIZE]));
    let mut cl = Client::finish_go(c);
    assert_eq!(cl.size, SIZE);
    for f in [
        tflags::HAS_FLAGS,
        tflags::SEND_FLUSH,
        tflags::SEND_FUA,
        tflags::SEND_TRIM,
        tflags::SEND_WRITE_ZEROES,
        tflags::CAN_MULTI_CONN,
    ] {
        assert!(cl.flags & f != 0, "flag {f:#x} not advertised");
    }
    assert_eq!(cl.read(0, 512), s.read_block(0, BS)[..512].to_vec());
    drop(cl);
    svc.stop();
}

#[test]
fn export_name_fallback_and_unknown_export() {
    let (_s, svc) = setup();
    let mut c = greet(&svc.socket);
    send_option(&mut c, opt::EXPORT_NAME, b"");
    let mut b = [0u8; 10];
    c.read_exact(&mut b).unwrap();
    assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), SIZE);
    // No zero padding was negotiated away? We asked for NO_ZEROES, so transmission starts now.
    let mut cl = Client {
        s: c,
        size: SIZE,
        flags: 0,
    };
    assert_eq!(cl.read(4096, 16).len(), 16);
    // An unknown name with EXPORT_NAME ends the connection (the spec's only option).
    let mut c = greet(&svc.socket);
    send_option(&mut c, opt::EXPORT_NAME, b"no-such-export");
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    svc.stop();
}

#[test]
fn bad_commands_flags_and_ranges_get_the_spec_errors_and_the_connection_goes_on() {
    let (s, svc) = setup();
    let mut c = Client::connect(&svc.socket, "");
    let data = Rng(3).block(BS);
    // Unknown command and BLOCK_STATUS (not negotiated): EINVAL.
    assert_eq!(c.call(99, 0, 0, 512, &[]).0, 22);
    assert_eq!(c.call(7, 0, 0, 512, &[]).0, 22);
    // A WRITE with a flag not valid for it: EINVAL, and its payload is drained.
    assert_eq!(
        c.call(cmd::WRITE, cflags::NO_HOLE, 0, BS as u32, &data).0,
        22
    );
    assert_eq!(c.call(cmd::READ, cflags::DF, 0, 512, &[]).0, 22);
    // Out of range: read and trim EINVAL, write and write-zeroes ENOSPC.
    assert_eq!(c.call(cmd::READ, 0, SIZE - 512, 1024, &[]).0, 22);
    assert_eq!(c.call(cmd::TRIM, 0, SIZE, 4096, &[]).0, 22);
    assert_eq!(c.call(cmd::WRITE, 0, SIZE - 512, BS as u32, &data).0, 28);
    assert_eq!(c.call(cmd::WRITE_ZEROES, 0, u64::MAX - 10, 4096, &[]).0, 28);
    // An oversized read: EINVAL.
    assert_eq!(c.call(cmd::READ, 0, 0, 33 << 20, &[]).0, 22);
    // FUA on a read is accepted (the spec says servers must accept it on any command).
    assert_eq!(c.call(cmd::READ, cflags::FUA, 0, 512, &[]).0, 0);
    // After all that, the connection still works, and nothing bad was written.
    c.write(8192, &data);
    assert_eq!(c.read(8192, BS as u32), data);
    drop(c);
    svc.stop();
    let r = s.verify();
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn unaligned_and_partial_block_io_is_read_modify_write() {
    let (s, svc) = setup();
    let mut c = Client::connect(&svc.socket, "");
    let mut model = std::fs::read(&s.image).unwrap();
    let mut rng = Rng(9);
    for (off, len) in [
        (1u64, 1usize),
        (4095, 2),
        (10_000, 9000),
        (512, 512),
        (SIZE - 100, 100),
        (3 * 4096 + 17, 3 * 4096),
    ] {
        let d = rng.block(len);
        c.write(off, &d);
        model[off as usize..off as usize + len].copy_from_slice(&d);
        assert_eq!(c.read(off, len as u32), d);
    }
    // Unaligned zeroes too.
    assert_eq!(
        c.call(cmd::WRITE_ZEROES, cflags::NO_HOLE, 5000, 10_000, &[])
            .0,
        0
    );
    model[5000..15_000].fill(0);
    assert_eq!(c.call(cmd::FLUSH, 0, 0, 0, &[]).0, 0);
    drop(c);
    svc.stop();
    assert_eq!(std::fs::read(&s.image).unwrap(), model);
    let r = s.verify();
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.summary.ok, SIZE / BS as u64);
}

#[test]
fn disc_with_requests_in_flight_answers_them_first() {
    let (s, svc) = setup();
    let mut c = Client::connect(&svc.socket, "");
    let mut rng = Rng(11);
    let blocks: Vec<Vec<u8>> = (0..32).map(|_| rng.block(BS)).collect();
    for (i, d) in blocks.iter().enumerate() {
        c.send(cmd::WRITE, 0, i as u64, (i * BS) as u64, BS as u32, d);
    }
    c.send(cmd::DISC, 0, 999, 0, 0, &[]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let (e, cookie) = c.reply();
        assert_eq!(e, 0);
        seen.insert(cookie);
    }
    assert_eq!(seen.len(), 32);
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "nothing after the replies, and the connection closes"
    );
    svc.stop();
    for (i, d) in blocks.iter().enumerate() {
        assert_eq!(&s.read_block(i as u64, BS), d);
    }
    assert!(s.verify().findings.is_empty());
}

#[test]
fn a_client_vanishing_mid_write_changes_nothing_and_the_service_goes_on() {
    let (s, svc) = setup();
    let before = std::fs::read(&s.image).unwrap();
    {
        let mut c = Client::connect(&svc.socket, "");
        let r = proto::Request {
            flags: 0,
            kind: cmd::WRITE,
            cookie: 1,
            offset: 0,
            length: 65536,
        };
        c.s.write_all(&r.encode()).unwrap();
        c.s.write_all(&[0xee; 1000]).unwrap();
    } // gone, 64 KiB promised, 1000 bytes sent
    let mut c = Client::connect(&svc.socket, "");
    assert_eq!(c.read(0, 4096), before[..4096].to_vec());
    drop(c);
    svc.stop();
    assert_eq!(std::fs::read(&s.image).unwrap(), before);
    let l = s.open(Access::Read).unwrap();
    assert_eq!(
        l.state(0).generation(),
        0,
        "no record of a write that never happened"
    );
}

#[test]
fn garbage_on_the_socket_ends_that_connection_only() {
    let (_s, svc) = setup();
    let mut rng = Rng(13);
    for n in [0usize, 1, 7, 100, 5000] {
        let mut c = std::os::unix::net::UnixStream::connect(&svc.socket).unwrap();
        let _ = c.write_all(&rng.block(n));
    }
    // Garbage after a good handshake: a request with a bad magic.
    let mut c = Client::connect(&svc.socket, "");
    c.s.write_all(&[0x55; 28]).unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    // Truncated option, oversized option.
    let mut g = greet(&svc.socket);
    g.write_all(&proto::IHAVEOPT.to_be_bytes()).unwrap();
    g.write_all(&opt::GO.to_be_bytes()).unwrap();
    g.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        g.read(&mut b).unwrap_or(0),
        0,
        "an oversized option closes the connection"
    );
    // The service is still there.
    let mut c = Client::connect(&svc.socket, "");
    assert_eq!(c.read(0, 512).len(), 512);
    drop(c);
    svc.stop();
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let s = Scratch::new(SIZE);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--read-only"]);
    let mut c = Client::connect(&svc.socket, "");
    assert!(c.flags & tflags::READ_ONLY != 0);
    assert_eq!(c.call(cmd::WRITE, 0, 0, 512, &[1; 512]).0, 1);
    assert_eq!(c.call(cmd::WRITE_ZEROES, 0, 0, 512, &[]).0, 1);
    assert_eq!(c.call(cmd::TRIM, 0, 0, 4096, &[]).0, 1);
    assert_eq!(c.read(0, 512), s.read_block(0, BS)[..512].to_vec());
    drop(c);
    svc.stop();
}

#[test]
fn named_export_answers_to_its_name_and_the_empty_name() {
    let s = Scratch::new(SIZE);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--export", "disk0"]);
    let mut c = greet(&svc.socket);
    send_option(&mut c, opt::LIST, b"");
    let (_, kind, d) = option_reply(&mut c);
    assert_eq!(kind, rep::SERVER);
    assert_eq!(&d[4..], b"disk0");
    drop(c);
    let mut a = Client::connect(&svc.socket, "disk0");
    let mut b = Client::connect(&svc.socket, "");
    assert_eq!(a.read(0, 64), b.read(0, 64));
    drop((a, b));
    svc.stop();
}
