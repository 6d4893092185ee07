//! `lostwrite demo [--dir DIR]`: the whole story on a scratch image, with no setup: make a
//! 64 MiB image of random data, baseline it, damage blocks underneath the ledger the three ways
//! a storage layer does (random bytes, zeroes, another block's contents), then verify.

use lostwrite::block::Geometry;
use lostwrite::device::{BlockDevice, FileDevice};
use lostwrite::ledger::{Access, BaselineSource, Ledger, OpenOptions};
use lostwrite::verify;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Flags of `demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the demo's files in this directory (default: a temporary directory, removed after).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A small deterministic generator, so every run damages the same blocks.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const IMAGE_BYTES: u64 = 64 << 20;
const BS: u32 = 4096;

pub fn run(a: Args) -> anyhow::Result<i32> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let image = dir.join("disk.img");
    let ledger_dir = dir.join("disk.img.ledger");
    if ledger_dir.exists() {
        anyhow::bail!(
            "{}: a ledger from an earlier demo is here; remove it or pick another --dir",
            ledger_dir.display()
        );
    }
    println!(
        "1. writing a {} MiB image of random data: {}",
        IMAGE_BYTES >> 20,
        image.display()
    );
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    {
        let f = std::fs::File::create(&image)?;
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..IMAGE_BYTES / buf.len() as u64 {
            rng.fill(&mut buf);
            f.write_all_at(&buf, i * buf.len() as u64)?;
        }
        f.sync_all()?;
    }
    let dev = FileDevice::open(&image, false)?;
    println!("2. lostwrite init --baseline: every block recorded as generation 0");
    Ledger::create(
        &ledger_dir,
        dev.identity(),
        dev.size(),
        BS,
        Some(BaselineSource {
            device: &dev,
            jobs: lostwrite::scan::default_jobs(),
            progress: None,
        }),
    )?;
    let geo = Geometry::new(BS, IMAGE_BYTES);
    let f = std::fs::OpenOptions::new().write(true).open(&image)?;
    let pick = |rng: &mut XorShift| rng.next() % geo.block_count();
    let mut damaged = Vec::new();
    let mut block = vec![0u8; BS as usize];
    for _ in 0..3 {
        let b = pick(&mut rng);
        rng.fill(&mut block);
        f.write_all_at(&block, geo.offset(b))?;
        damaged.push((b, "corrupt: overwritten with random bytes".to_string()));
    }
    for _ in 0..2 {
        let b = pick(&mut rng);
        f.write_all_at(&vec![0u8; BS as usize], geo.offset(b))?;
        damaged.push((b, "zeroed".to_string()));
    }
    for _ in 0..2 {
        let (src, dst) = (pick(&mut rng), pick(&mut rng));
        dev.read_at(&mut block, geo.offset(src))?;
        f.write_all_at(&block, geo.offset(dst))?;
        damaged.push((
            dst,
            format!("misdirected: now holds block {src}'s contents"),
        ));
    }
    f.sync_all()?;
    damaged.sort();
    println!(
        "3. damaging {} blocks underneath the ledger, as a faulty storage layer would:",
        damaged.len()
    );
    for (b, how) in &damaged {
        println!("     block {b:>6}: {how}");
    }
    println!("4. lostwrite verify:");
    let ledger = Ledger::open(
        &ledger_dir,
        Some((dev.identity(), dev.size())),
        OpenOptions::new(Access::Read),
    )?;
    let report = verify::run(
        &ledger,
        &dev,
        &verify::Options {
            jobs: lostwrite::scan::default_jobs(),
            strict: false,
            progress: false,
        },
    )?;
    for line in report.human(50).lines() {
        println!("     {line}");
    }
    let found: Vec<u64> = report.findings.iter().map(|f| f.block).collect();
    let want: Vec<u64> = damaged.iter().map(|d| d.0).collect();
    if found == want {
        println!("verify named exactly the {} damaged blocks.", want.len());
    } else {
        println!("verify named blocks {found:?}; the damaged blocks were {want:?}");
    }
    if a.dir.is_some() {
        println!("files kept in {}", dir.display());
    }
    Ok(if found == want { 0 } else { 1 })
}
