//! A real filesystem through the sidecar: ext4 on a loop device on an nbdfuse file on
//! `lostwrite serve`. Files written, unmounted, `e2fsck -fn` clean, `verify` clean, and the files
//! read back identical after a remount through a fresh service.

use crate::helpers::*;
use crate::service::{can_mount, have, run, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nbdfuse + loop device (+ mount), torn down by PID and device name even when a test fails.
pub struct Stack {
    nbdfuse: Option<Child>,
    fuse_dir: PathBuf,
    pub loop_dev: Option<String>,
    pub mnt: Option<PathBuf>,
}

impl Stack {
    /// Exposes the export as a file with nbdfuse and attaches it to a loop device.
    pub fn attach(svc: &Service, dir: &Path) -> Stack {
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let child = Command::new("nbdfuse")
            .arg(fuse_dir.join("disk"))
            .arg("--unix")
            .arg(&svc.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut st = Stack {
            nbdfuse: Some(child),
            fuse_dir: fuse_dir.clone(),
            loop_dev: None,
            mnt: None,
        };
        let t = Instant::now();
        while std::fs::metadata(fuse_dir.join("disk"))
            .map(|m| m.len())
            .unwrap_or(0)
            == 0
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "nbdfuse did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(fuse_dir.join("disk")));
        st.loop_dev = Some(dev.trim().to_string());
        st
    }

    pub fn dev(&self) -> &str {
        self.loop_dev.as_deref().unwrap()
    }

    pub fn mount(&mut self, mnt: &Path) {
        std::fs::create_dir_all(mnt).unwrap();
        run(Command::new("mount").arg(self.dev()).arg(mnt));
        self.mnt = Some(mnt.to_path_buf());
    }

    /// Unmounts the filesystem (asserting it can be) and flushes the loop device's buffers.
    pub fn umount(&mut self) {
        if let Some(m) = &self.mnt {
            let r = umount_busy(m);
            assert!(r.is_ok(), "umount {}: {r:?}", m.display());
            // Forgotten only once unmounted: a failed umount is tried again on teardown.
            self.mnt = None;
        }
        run(Command::new("blockdev").arg("--flushbufs").arg(self.dev()));
    }

    /// Detaches everything (in order) and waits for nbdfuse to exit.
    pub fn detach(mut self) {
        self.teardown(true);
    }

    fn teardown(&mut self, check: bool) {
        if let Some(m) = self.mnt.take() {
            let r = umount_busy(&m);
            assert!(!check || r.is_ok(), "umount {}: {r:?}", m.display());
        }
        if let Some(d) = self.loop_dev.take() {
            let _ = Command::new("losetup").arg("-d").arg(&d).status();
            // A loop device still open somewhere is detached later, when last closed (it is
            // only marked autoclear): until then it holds the nbdfuse file, and the FUSE
            // filesystem cannot be unmounted.
            let backing = Path::new("/sys/block")
                .join(Path::new(&d).file_name().unwrap())
                .join("loop/backing_file");
            within(Duration::from_secs(20), || !backing.exists());
        }
        if let Some(mut c) = self.nbdfuse.take() {
            // nbdfuse exits once its filesystem is unmounted; try again while it is busy.
            let gone = within(Duration::from_secs(20), || {
                let _ = Command::new("umount")
                    .arg(&self.fuse_dir)
                    .stderr(Stdio::null())
                    .status();
                c.try_wait().unwrap().is_some()
            });
            if !gone {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                let _ = c.wait();
            }
        } else {
            let _ = Command::new("umount")
                .arg(&self.fuse_dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.teardown(false);
    }
}

/// Unmounts `m`, trying again for a while when it is busy: a process another test is
/// spawning holds a copy of this process's open files between its fork and its exec, which
/// on a loaded machine can outlast the close of a file just written. Err: umount's message.
fn umount_busy(m: &Path) -> Result<(), String> {
    let mut last = String::new();
    let ok = within(Duration::from_secs(30), || {
        match Command::new("umount").arg(m).output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr).into_owned();
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    if ok {
        Ok(())
    } else {
        Err(last)
    }
}

/// Writes a tree of files with pseudo-random contents; returns path → contents.
pub fn write_tree(root: &Path, seed: u64, files: usize) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out = BTreeMap::new();
    for i in 0..files {
        let d = root
            .join(format!("dir{}", i % 7))
            .join(format!("sub{}", i % 3));
        std::fs::create_dir_all(&d).unwrap();
        let len = (rng.next() % 300_000) as usize;
        let data = rng.block(len);
        let p = d.join(format!("file{i}.bin"));
        std::fs::write(&p, &data).unwrap();
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), data);
    }
    out
}

#[test]
fn ext4_over_nbdfuse_over_serve_verifies_clean_and_reads_back() {
    if !can_mount() || !have("nbdfuse") || !have("mkfs.ext4") || !have("losetup") {
        return;
    }
    let s = Scratch::new(128 << 20);
    s.init(4096, true);
    let mnt = s.dir.path().join("mnt");
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(st.dev()));
    st.mount(&mnt);
    let tree = write_tree(&mnt, 42, 120);
    st.umount();
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(st.dev())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    st.detach();
    let log = svc.stop();
    assert!(log.contains("closed cleanly"), "{log}");
    verify_clean(&s.image);

    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    st.mount(&mnt);
    for (p, data) in &tree {
        assert!(
            std::fs::read(mnt.join(p)).unwrap() == *data,
            "{} differs",
            p.display()
        );
    }
    st.umount();
    st.detach();
    svc.stop();
    verify_clean(&s.image);
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_block_device_is_served_and_verified_and_its_trims_untrack_blocks() {
    if !can_mount() || !have("losetup") || !have("qemu-io") {
        return;
    }
    let s = Scratch::new(16 << 20);
    let dev = Loop(
        run(Command::new("losetup").args(["-f", "--show"]).arg(&s.image))
            .trim()
            .to_string(),
    );
    let ledger = s.dir.path().join("loop.ledger");
    let sock = s.dir.path().join("loop.sock");
    let o = bin()
        .args(["init", "--baseline", "--ledger"])
        .arg(&ledger)
        .arg(&dev.0)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("4096 blocks"),
        "{o:?}"
    );
    let svc = Service::start_on(
        Path::new(&dev.0),
        &sock,
        &["--ledger", ledger.to_str().unwrap()],
    );
    run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(svc.uri())
        .args([
            "-c",
            "write -P 0x61 1m 64k",
            "-c",
            "discard 0 64k",
            "-c",
            "flush",
        ]));
    svc.stop();
    let out = lw_ok(
        bin()
            .args(["verify", "--json", "--ledger"])
            .arg(&ledger)
            .arg(&dev.0),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["summary"]["untracked"], 16,
        "the 16 discarded blocks are untracked: {v}"
    );
    assert_eq!(v["summary"]["ok"], 4096 - 16);
}
