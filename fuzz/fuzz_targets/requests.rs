//! Transmission requests with arbitrary headers, validated and executed against an in-memory
//! export, as the server does: offsets and lengths near the limits of u64/u32 must give NBD
//! errors, never a panic or an out-of-range access.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lostwrite::nbd::proto::{cflags, cmd, Request, REQUEST_LEN};
use lostwrite::nbd::server::validate;
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
        let Ok(h) = <[u8; REQUEST_LEN]>::try_from(chunk) else {
            break;
        };
        let Ok(r) = Request::parse(&h) else { continue };
        if validate(&r).is_err() {
            continue;
        }
        let (off, len) = (r.offset, r.length as u64);
        // Bounded buffers: the server refuses payloads over 32 MiB before allocating.
        let len_buf = (r.length as usize).min(1 << 20);
        let fua = r.flags & cflags::FUA != 0;
        let _ = match r.kind {
            cmd::READ => e.read(off, &mut vec![0u8; len_buf]),
            cmd::WRITE => e.write(off, &vec![0xa5u8; len_buf], fua),
            cmd::FLUSH => e.flush(),
            cmd::TRIM => e.trim(off, len, fua),
            cmd::WRITE_ZEROES => e.write_zeroes(
                off,
                len,
                r.flags & cflags::NO_HOLE == 0,
                r.flags & cflags::FAST_ZERO != 0,
                fua,
            ),
            cmd::CACHE => e.cache(off, len),
            _ => Ok(()),
        };
    }
});
