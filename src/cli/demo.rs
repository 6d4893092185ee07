//! `lostwrite demo [--dir DIR]`: the incident, end to end, with no setup and no root.
//!
//! A scratch ext4 image is made with `mkfs.ext4 -d` (files, no mounting), baselined, and put
//! behind the sidecar, started in this process on a unix socket (the same `Host` that `serve`
//! starts). Three phases of work reach the image *through NBD*, each ending with a FLUSH:
//! in-place updates of data files and new files in a directory. Each phase is prepared with debugfs on a scratch copy of the filesystem; the
//! blocks it changed are then written through the NBD client exactly as a guest kernel would
//! write them. Then the storage layer "loses" the writes of phase 2 that nothing overwrote
//! later: they read their phase-1 contents again. Finally verify and report say what was lost,
//! when, and which files it hurts, and draw the timeline; e2fsck runs beside it for contrast.
//! Times are real (the phases are about a second apart); nothing is simulated.

use anyhow::Context;
use lostwrite::block::Geometry;
use lostwrite::device::{BlockDevice, FileDevice};
use lostwrite::forensics::{self, plot};
use lostwrite::host::{ExportSpec, Host, Outcome, ServeConfig, Started};
use lostwrite::ledger::kept::Keep;
use lostwrite::ledger::{Access, BaselineSource, Ledger, LedgerWriter, OpenOptions};
use lostwrite::nbd::client::Client;
use lostwrite::repair::{self, KeptSource, Source};
use lostwrite::verify;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Flags of `demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep every file of the demo in this directory (default: a temporary directory, removed
    /// afterwards; the picture is then written to ./lostwrite-demo.svg).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

const BS: u64 = 4096;
const IMAGE_MIB: u64 = 64;

/// A small deterministic generator, so every run writes the same contents.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn tool(name: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        anyhow::bail!("the demo needs {name} from e2fsprogs (apt-get install e2fsprogs)");
    }
    Ok(())
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// CRC-32 and length of each file's contents, read with `debugfs cat` (no mounting).
fn file_sums(image: &Path, paths: &[&str]) -> anyhow::Result<Vec<(u32, usize)>> {
    paths
        .iter()
        .map(|p| {
            let o = Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {p}"))
                .arg(image)
                .output()
                .with_context(|| format!("running debugfs cat {p}"))?;
            Ok((crc32fast::hash(&o.stdout), o.stdout.len()))
        })
        .collect()
}

/// The filesystem blocks of a file, from debugfs.
fn file_blocks(image: &Path, path: &str) -> anyhow::Result<Vec<u64>> {
    let out = sh(Command::new("debugfs")
        .args(["-c", "-R"])
        .arg(format!("blocks {path}"))
        .arg(image))?;
    Ok(out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect())
}

/// One phase of work, prepared on `shadow` (a copy of the image): in-place updates of some
/// blocks of existing files, and new files.
struct Phase {
    name: &'static str,
    update: Vec<(&'static str, std::ops::Range<usize>)>,
    create: Vec<(&'static str, usize)>,
}

fn prepare(shadow: &Path, dir: &Path, p: &Phase, rng: &mut XorShift) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(shadow)?;
    for (path, range) in &p.update {
        let blocks = file_blocks(shadow, path)?;
        for &b in blocks.get(range.clone()).unwrap_or(&[]) {
            f.write_all_at(&rng.bytes(BS as usize), b * BS)?;
        }
    }
    drop(f);
    if !p.create.is_empty() {
        let mut script = String::new();
        for (i, (path, len)) in p.create.iter().enumerate() {
            let src = dir.join(format!("new-{}-{i}", p.name.replace(' ', "-")));
            std::fs::write(&src, rng.bytes(*len))?;
            script.push_str(&format!("write {} {path}\n", src.display()));
        }
        let cmds = dir.join("debugfs.cmds");
        std::fs::write(&cmds, script)?;
        sh(Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(shadow))?;
    }
    Ok(())
}

/// Blocks that differ between two images.
fn differing(a: &Path, b: &Path) -> anyhow::Result<Vec<u64>> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    Ok((0..x.len() as u64 / BS)
        .filter(|&i| {
            x[(i * BS) as usize..((i + 1) * BS) as usize]
                != y[(i * BS) as usize..((i + 1) * BS) as usize]
        })
        .collect())
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let started = Instant::now();
    tool("mkfs.ext4")?;
    tool("debugfs")?;
    let tmp;
    let (dir, keep) = match &a.dir {
        Some(d) => {
            // The demo makes disk.img, staging/ and more here: never over someone's files.
            if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) {
                anyhow::bail!(
                    "--dir {}: not empty; the demo writes disk.img, its ledger and scratch files there, so give a new or empty directory",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| {
                format!(
                    "--dir {}: cannot create the demo's directory; give a writable place",
                    d.display()
                )
            })?;
            (d.clone(), true)
        }
        None => {
            tmp = tempfile::tempdir().context(
                "creating a temporary directory for the demo (set TMPDIR to a writable place, or give --dir DIR)",
            )?;
            (tmp.path().to_path_buf(), false)
        }
    };
    let image = dir.join("disk.img");
    let ledger_dir = dir.join("disk.img.ledger");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);

    outln!("== 1. A {IMAGE_MIB} MiB ext4 image with an application's files (mkfs.ext4 -d, no mounting)");
    let staging = dir.join("staging");
    let write = |p: PathBuf, data: &[u8]| {
        std::fs::write(&p, data).with_context(|| format!("{}: writing a demo file", p.display()))
    };
    for d in ["app/config", "home/alice"] {
        let p = staging.join(d);
        std::fs::create_dir_all(&p)
            .with_context(|| format!("{}: creating a demo directory", p.display()))?;
    }
    for i in 1..=4 {
        write(
            staging.join(format!("app/data{i}.fs")),
            &rng.bytes(256 << 10),
        )?;
    }
    write(staging.join("app/config/app.conf"), b"threads = 8\n")?;
    write(staging.join("home/alice/notes.txt"), b"remember the milk\n")?;
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_MIB << 20))
        .with_context(|| format!("{}: creating the demo image", image.display()))?;
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", "demo", "-d"])
        .arg(&staging)
        .arg(&image))?;
    outln!(
        "   {}: /app/data1.fs../app/data4.fs, /app/config/app.conf, /home/alice/notes.txt",
        image.display()
    );

    outln!("== 2. lostwrite init --baseline: every block recorded as generation 0");
    let dev = FileDevice::open(&image, true)?;
    Ledger::create(
        &ledger_dir,
        dev.identity(),
        dev.size(),
        BS as u32,
        Some(BaselineSource {
            device: &dev,
            jobs: lostwrite::scan::default_jobs(),
            progress: None,
        }),
    )?;

    let socket = dir.join("disk.sock");
    outln!(
        "== 3. lostwrite serve, in this process, on {}",
        socket.display()
    );
    // The same host `serve` starts, with the defaults of `serve DEVICE --socket PATH`.
    drop(dev);
    let device = image
        .to_str()
        .context("the demo's directory must be a UTF-8 path (give --dir DIR)")?
        .to_string();
    let config = ServeConfig {
        socket: Some(socket.clone()),
        export: vec![ExportSpec {
            device,
            ledger: Some(ledger_dir.clone()),
            // The written blocks themselves are kept too, so step 8 can give them back.
            keep_data: Some(Keep::Bytes(64 << 20)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let host = match Host::start(config, &crossbeam_channel::never())? {
        Started::Serving(host) => host,
        Started::Interrupted(_) => unreachable!("nothing sends on a channel that never sends"),
    };
    let mut client = Client::connect_unix(&socket, "")?;

    let phases = [
        Phase {
            name: "phase 1",
            update: vec![("/app/data1.fs", 0..16)],
            create: vec![("/app/log-monday.txt", 9000)],
        },
        Phase {
            name: "phase 2",
            update: vec![("/app/data3.fs", 8..40)],
            create: vec![("/app/report-q3.txt", 20000), ("/app/report-q4.txt", 12000)],
        },
        Phase {
            name: "phase 3",
            update: vec![("/app/data2.fs", 0..24), ("/app/data4.fs", 30..50)],
            create: vec![],
        },
    ];
    let shadow = dir.join("shadow.img");
    let after_phase1 = dir.join("after-phase-1.img");
    let mut changed_in: Vec<BTreeSet<u64>> = Vec::new();
    outln!(
        "== 4. The workload, through NBD, each phase ending with a FLUSH (phases a second apart)"
    );
    for (i, p) in phases.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1000));
        }
        std::fs::copy(&image, &shadow)?;
        prepare(&shadow, &dir, p, &mut rng)?;
        let blocks = differing(&image, &shadow)?;
        if blocks.is_empty() {
            anyhow::bail!(
                "{}: preparing the phase changed no block (debugfs refused its commands?)",
                p.name
            );
        }
        let data = std::fs::read(&shadow)?;
        for &b in &blocks {
            client.write(
                b * BS,
                &data[(b * BS) as usize..((b + 1) * BS) as usize],
                false,
            )?;
        }
        client.flush()?;
        let what: Vec<String> = p
            .update
            .iter()
            .map(|(f, r)| format!("updated {} blocks of {f} in place", r.len()))
            .chain(p.create.iter().map(|(f, _)| format!("created {f}")))
            .collect();
        outln!(
            "   {}: {}; {} blocks written, flushed",
            p.name,
            what.join(", "),
            blocks.len()
        );
        changed_in.push(blocks.into_iter().collect());
        if i == 0 {
            std::fs::copy(&image, &after_phase1)?;
        }
    }
    client.disconnect()?;
    for closed in host.stop()? {
        if let Outcome::CloseFailed(e) = closed.outcome {
            return Err(e.into());
        }
    }
    outln!("   the sidecar stopped cleanly: every write is recorded and durable");

    let files: Vec<&str> = phases
        .iter()
        .flat_map(|p| {
            p.update
                .iter()
                .map(|(f, _)| *f)
                .chain(p.create.iter().map(|(f, _)| *f))
        })
        .collect();
    let written_sums = file_sums(&image, &files)?;

    // The fault: the writes of phase 2 that nothing wrote over later read their phase-1
    // contents again, as from a storage cache that lost a window of acknowledged writes.
    let lost: Vec<u64> = changed_in[1].difference(&changed_in[2]).copied().collect();
    {
        let old = std::fs::File::open(&after_phase1)?;
        let img = std::fs::OpenOptions::new().write(true).open(&image)?;
        let mut buf = vec![0u8; BS as usize];
        for &b in &lost {
            old.read_exact_at(&mut buf, b * BS)?;
            img.write_all_at(&buf, b * BS)?;
        }
        img.sync_all()?;
    }
    outln!("== 5. A storage fault: the {} blocks written in phase 2 (and not rewritten later) revert to their phase-1 contents", lost.len());
    let hit = file_sums(&image, &files)?
        .iter()
        .zip(&written_sums)
        .filter(|(now, then)| now != then)
        .count();
    outln!(
        "   {hit} of the {} files the workload wrote now read something else (CRC-32 of each, through debugfs)",
        files.len()
    );

    outln!("== 6. What e2fsck -fn says (for contrast):");
    let fsck = Command::new("e2fsck").arg("-fn").arg(&image).output()?;
    let text =
        String::from_utf8_lossy(&fsck.stdout).to_string() + &String::from_utf8_lossy(&fsck.stderr);
    for line in text
        .lines()
        .filter(|l| !l.starts_with("Pass ") && !l.trim().is_empty() && !l.starts_with("e2fsck 1"))
        .take(8)
    {
        outln!("   | {line}");
    }
    outln!("   (exit {}: it sees the damage only where metadata no longer adds up, and never says what was lost or when)", fsck.status.code().unwrap_or(-1));

    outln!("== 7. lostwrite verify + lostwrite report --files --plot");
    let dev = FileDevice::open(&image, false)?;
    let ledger = Ledger::open(
        &ledger_dir,
        Some((dev.identity(), dev.size())),
        OpenOptions::new(Access::Read),
    )?;
    let v = verify::run(
        &ledger,
        &dev,
        &verify::Options {
            jobs: lostwrite::scan::default_jobs(),
            strict: false,
            progress: false,
        },
    )?;
    for line in v.human(8).lines() {
        outln!("   {line}");
    }
    let mut rep = forensics::build(
        &ledger,
        &dev,
        &image.display().to_string(),
        v.findings.clone(),
        &forensics::Options {
            files: true,
            ..Default::default()
        },
    )?;
    let svg = if keep {
        dir.join("incident.svg")
    } else {
        PathBuf::from("lostwrite-demo.svg")
    };
    std::fs::write(&svg, plot::render(&rep, dev.size()))?;
    rep.plot = Some(svg.display().to_string());
    outln!();
    for line in rep.human(20).lines() {
        outln!("   {line}");
    }
    let found: BTreeSet<u64> = v.findings.iter().map(|f| f.block).collect();
    let want: BTreeSet<u64> = lost.iter().copied().collect();
    let geo = Geometry::new(BS as u32, IMAGE_MIB << 20);
    outln!();
    if found == want {
        outln!("verify named exactly the {} reverted blocks ({} of the {} blocks of the image), in {:.1} s.", want.len(), want.len(), geo.block_count(), started.elapsed().as_secs_f64());
    } else {
        outln!("verify named blocks {found:?}; the reverted blocks were {want:?}");
    }
    drop(ledger);
    drop(dev);

    outln!();
    outln!("== 8. lostwrite repair --apply: the lost writes given back from what the sidecar kept");
    let repaired = repair_from_kept(&image, &ledger_dir)?;
    let sums = file_sums(&image, &files)?;
    let same = files
        .iter()
        .zip(sums.iter().zip(&written_sums))
        .filter(|(_, (now, then))| now == then)
        .count();
    outln!(
        "   {same} of the {} files read byte for byte what was written (CRC-32 of each, through debugfs)",
        files.len()
    );
    let fsck = Command::new("e2fsck").arg("-fn").arg(&image).output()?;
    outln!(
        "   e2fsck -fn: exit {}{}",
        fsck.status.code().unwrap_or(-1),
        if fsck.status.success() {
            " (clean)"
        } else {
            ""
        }
    );
    if keep {
        outln!("files kept in {}", dir.display());
    }
    let whole = found == want && repaired && same == files.len() && fsck.status.success();
    Ok(if whole { 0 } else { 1 })
}

/// Repairs every failing block of `image` from its ledger's kept data, as `lostwrite repair
/// --apply` does, printing the plan and the verification after it. True when verify is clean.
fn repair_from_kept(image: &Path, ledger_dir: &Path) -> anyhow::Result<bool> {
    let dev = FileDevice::open(image, true)?;
    let writer = LedgerWriter::open(
        ledger_dir,
        Some((dev.identity(), dev.size())),
        OpenOptions::new(Access::Write),
    )?;
    let vopts = verify::Options {
        jobs: lostwrite::scan::default_jobs(),
        strict: false,
        progress: false,
    };
    let kept = KeptSource::open(ledger_dir)?
        .context("the demo's sidecar kept no data log: nothing to repair from")?;
    let sources: [&dyn Source; 1] = [&kept];
    let repair::Repaired {
        plan,
        applied,
        after,
    } = repair::repair_and_verify(&writer, &dev, None, &sources, &vopts)?;
    for line in plan.human(6).lines() {
        outln!("   {line}");
    }
    outln!(
        "   {} blocks written back and recorded in the ledger; verify after the repair:",
        applied.written
    );
    for line in after.human(4).lines() {
        outln!("   {line}");
    }
    Ok(after.findings.is_empty() && applied.written == plan.repairable)
}
