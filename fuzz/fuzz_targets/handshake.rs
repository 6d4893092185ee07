//! The server side of NBD negotiation, fed arbitrary client bytes: every outcome must be an
//! error or a clean end, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lostwrite::server::handshake::{negotiate, Exports};
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

mod mem {
    include!("mem_device.rs");
}

struct Duplex<'a> {
    input: &'a [u8],
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn exports() -> &'static Exports {
    static E: OnceLock<Exports> = OnceLock::new();
    E.get_or_init(|| {
        let opts = ExportOptions {
            name: "disk".into(),
            read_only: false,
            on_mismatch: OnMismatch::Log,
        };
        Exports(vec![Arc::new(Export::new(
            Box::new(mem::Mem::new(1 << 20)),
            None,
            opts,
        ))])
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = Duplex { input: data };
    let _ = negotiate(&mut s, exports(), &|| false);
});
