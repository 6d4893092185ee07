//! The journal frame decoder on arbitrary bytes: a damaged or hostile journal must be refused,
//! never panic or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lostwrite::ledger::frame;

fuzz_target!(|data: &[u8]| {
    let id = [7u8; 16];
    let mut pos = 0;
    while pos < data.len() {
        match frame::parse(&data[pos..], &id) {
            Ok(f) => {
                let _ = f.records();
                pos += f.len;
            }
            Err(_) => pos += 1,
        }
    }
    // Also as a segment header.
    let _ = lostwrite::ledger::segment::SegmentHeader::decode(data);
});
