//! Transmission requests with arbitrary headers, validated and dispatched against an in-memory
//! export by the server's own functions: offsets and lengths near the limits of u64/u32 must give NBD
//! errors, never a panic or an out-of-range access.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lostwrite::nbd::proto::{cmd, Request, REQUEST_LEN};
use lostwrite::server::transmission::{dispatch, validate};
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use std::sync::OnceLock;

mod mem {
    include!("mem_device.rs");
}

fn export() -> &'static Export {
    static E: OnceLock<Export> = OnceLock::new();
    E.get_or_init(|| {
        let opts = ExportOptions {
            name: String::new(),
            read_only: false,
            on_mismatch: OnMismatch::Log,
        };
        Export::new(Box::new(mem::Mem::new(64 << 10)), None, opts)
    })
}

fuzz_target!(|data: &[u8]| {
    let e = export();
    for chunk in data.chunks(REQUEST_LEN) {
        let Ok(h) = <[u8; REQUEST_LEN]>::try_from(chunk) else { break };
        let Ok(r) = Request::parse(&h) else { continue };
        // Bounded buffers: the server refuses payloads over 32 MiB before allocating; here
        // payloads over 1 MiB are skipped to keep the runs fast.
        if validate(&r).is_err() || r.length > 1 << 20 {
            continue;
        }
        let n = r.length as usize;
        let (payload, mut read) = match r.kind {
            cmd::WRITE => (vec![0xa5u8; n], Vec::new()),
            cmd::READ => (Vec::new(), vec![0u8; n]),
            _ => (Vec::new(), Vec::new()),
        };
        let _ = dispatch(e, &r, &payload, &mut read);
    }
});
