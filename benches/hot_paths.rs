//! Hot paths: the scan loop's checksum-and-compare, frame encoding, journal append, and group
//! commit under contention. Run with `cargo bench`; docs/PERFORMANCE.md records the figures.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lostwrite::block;
use lostwrite::ledger::record::Record;
use lostwrite::ledger::{frame, segment, writer};
use std::hint::black_box;

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn checksum_compare(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum_compare");
    for bs in [4096usize, 65536] {
        let chunk = data(1 << 20);
        let expected: Vec<u32> = chunk.chunks_exact(bs).map(block::checksum).collect();
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        g.bench_with_input(BenchmarkId::new("1MiB_chunk", bs), &bs, |b, &bs| {
            b.iter(|| {
                let mut mismatches = 0u32;
                for (blk, want) in chunk.chunks_exact(bs).zip(&expected) {
                    if block::checksum(black_box(blk)) != *want {
                        mismatches += 1;
                    }
                }
                black_box(mismatches)
            })
        });
    }
    g.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    let id = [7u8; 16];
    for n in [1usize, 256] {
        let records: Vec<Record> = (0..n as u64)
            .map(|b| Record::Write {
                block: b,
                generation: 3,
                crc: 0xdead_beef,
            })
            .collect();
        let mut buf = Vec::with_capacity(64 << 10);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("records", n), &records, |b, r| {
            b.iter(|| {
                buf.clear();
                frame::encode(&mut buf, &id, 1, 0, 0, black_box(r));
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn new_writer(dir: &std::path::Path) -> writer::JournalWriter {
    let id = [1u8; 16];
    let (_, path, _) = writer::create_segment(dir, &id, 1, 1, 0, 0).unwrap();
    let header = std::fs::read(&path).unwrap();
    writer::JournalWriter::resume(
        dir,
        id,
        writer::Resume {
            segment: 1,
            offset: segment::HEADER_LEN as u64,
            content_crc: crc32fast::hash(&header),
            next_lsn: 1,
        },
        0,
        1 << 40,
    )
    .unwrap()
}

fn journal_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let w = new_writer(dir.path());
    let rec = [Record::Write {
        block: 42,
        generation: 7,
        crc: 0x1234_5678,
    }];
    let mut g = c.benchmark_group("journal_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_write_record", |b| {
        b.iter(|| black_box(w.append(black_box(&rec), 0).unwrap()))
    });
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    // On tmpfs (if present) fdatasync is free, so this measures the commit protocol itself.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let w = new_writer(base.path());
    let rec = [Record::Write {
        block: 1,
        generation: 1,
        crc: 1,
    }];
    let mut g = c.benchmark_group("group_commit");
    for threads in [1usize, 4] {
        g.throughput(Throughput::Elements(threads as u64 * 64));
        g.bench_with_input(
            BenchmarkId::new("append_then_sync_x64", threads),
            &threads,
            |b, &t| {
                b.iter(|| {
                    std::thread::scope(|s| {
                        for _ in 0..t {
                            s.spawn(|| {
                                for _ in 0..64 {
                                    let (_, last) = w.append(&rec, 0).unwrap();
                                    w.sync_to(last).unwrap();
                                }
                            });
                        }
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    checksum_compare,
    frame_encode,
    journal_append,
    group_commit
);
criterion_main!(benches);
