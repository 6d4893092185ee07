//! Shared helpers: scratch directories, images of pseudo-random bytes, a device plus ledger
//! pair driven through the library API, and running the real binary.

#![allow(dead_code)]

use lostwrite::block;
use lostwrite::device::{BlockDevice, FileDevice};
use lostwrite::ledger::{Access, BaselineSource, Ledger, LedgerWriter, OpenOptions, WriteSession};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deterministic pseudo-random bytes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn block(&mut self, bs: usize) -> Vec<u8> {
        let mut b = vec![0u8; bs];
        self.fill(&mut b);
        b
    }
}

/// Writes an image of `size` pseudo-random bytes.
pub fn random_image(path: &Path, size: u64, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; (1 << 20).min(size as usize)];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], off).unwrap();
        off += n as u64;
    }
}

/// A scratch directory with an image and its ledger.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub ledger: PathBuf,
}

impl Scratch {
    /// An image of `size` random bytes, without a ledger yet.
    pub fn new(size: u64) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        random_image(&image, size, 0x5eed);
        let ledger = dir.path().join("disk.img.ledger");
        Scratch { dir, image, ledger }
    }

    /// Creates the ledger (with a baseline when `baseline`).
    pub fn init(&self, bs: u32, baseline: bool) {
        let dev = self.device(false);
        Ledger::create(
            &self.ledger,
            dev.identity(),
            dev.size(),
            bs,
            baseline.then_some(BaselineSource {
                device: &dev,
                jobs: 2,
                progress: None,
            }),
        )
        .unwrap();
    }

    pub fn device(&self, writable: bool) -> FileDevice {
        FileDevice::open(&self.image, writable).unwrap()
    }

    /// Opens the ledger as its writer (no session).
    pub fn open_writer(&self) -> lostwrite::Result<LedgerWriter> {
        let dev = self.device(false);
        LedgerWriter::open(
            &self.ledger,
            Some((dev.identity(), dev.size())),
            OpenOptions::new(Access::Write),
        )
    }

    pub fn open(&self, access: Access) -> lostwrite::Result<Ledger> {
        let dev = self.device(false);
        Ledger::open(
            &self.ledger,
            Some((dev.identity(), dev.size())),
            OpenOptions::new(access),
        )
    }

    /// Opens the ledger for writing with a session.
    pub fn writer(&self, strict: bool) -> (WriteSession, FileDevice) {
        let l = self.open_writer().unwrap().begin_session(strict).unwrap();
        (l, self.device(true))
    }

    /// Reads block `b`.
    pub fn read_block(&self, b: u64, bs: usize) -> Vec<u8> {
        let mut buf = vec![0u8; bs];
        self.device(false).read_at(&mut buf, b * bs as u64).unwrap();
        buf
    }

    /// Writes block `b` underneath the ledger (a storage fault).
    pub fn poke(&self, b: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .unwrap();
        f.write_all_at(data, b * data.len() as u64).unwrap();
    }

    /// Runs verify through the library.
    pub fn verify(&self) -> lostwrite::verify::report::Report {
        let l = self.open(Access::Read).unwrap();
        let dev = self.device(false);
        lostwrite::verify::run(
            &l,
            &dev,
            &lostwrite::verify::Options {
                jobs: 2,
                strict: false,
                progress: false,
            },
        )
        .unwrap()
    }
}

/// Records and performs a write of whole blocks, as the sidecar does.
pub fn write_through(l: &WriteSession, dev: &FileDevice, first_block: u64, data: &[u8], fua: bool) {
    let bs = l.geometry().block_size as u64;
    let t = l.record_write_data(first_block, data).unwrap();
    dev.write_at(data, first_block * bs, fua).unwrap();
    l.complete(&t, true).unwrap();
    if fua {
        l.record_fua(&t).unwrap();
    }
}

/// A flush through the ledger with the device's own flush.
pub fn flush(l: &WriteSession, dev: &FileDevice) {
    l.flush(|| dev.flush()).unwrap();
}

/// The checksum of a block.
pub fn crc(data: &[u8]) -> u32 {
    block::checksum(data)
}

/// Copies a directory tree (to try many damages on copies of one ledger).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// The `lostwrite` binary.
pub fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("lostwrite").unwrap()
}

/// The journal's only (or last) segment file.
pub fn last_segment(ledger: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(ledger.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Runs `lostwrite verify IMAGE` and asserts it exits 0.
pub fn verify_clean(image: &Path) {
    let o = bin().arg("verify").arg(image).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs a `lostwrite` command line, asserting it succeeds; returns its stdout.
pub fn lw_ok(cmd: &mut assert_cmd::Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `ok` until it holds (true) or `d` has passed (false). On a loaded machine a test waits
/// for a condition, never for a fixed time.
pub fn within(d: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if ok() {
            return true;
        }
        if t.elapsed() >= d {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to 30 s for `what` to hold; panics naming it past that.
pub fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    assert!(
        within(Duration::from_secs(30), ok),
        "timed out waiting for {what}"
    );
}
