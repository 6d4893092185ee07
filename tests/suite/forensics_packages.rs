//! `report --packages`: a dpkg database (status and .list files for a few packages, a
//! Multi-Arch library and a merged /usr among them) and the packages' files on a real ext4 and
//! XFS behind the sidecar; some files rewritten in session 2 and reverted behind the ledger's
//! back; the report must name exactly the packages owning the reverted files, with those
//! files, count the damaged file no package owns, follow dpkg diversions, and say so when the
//! dpkg status itself reverted.

use crate::ext4::Stack;
use crate::forensics_xfs::{bmap, report_json, revert};
use crate::helpers::*;
use crate::service::{can_mount, have, run, Service};
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// dpkg status with three installed packages and one removed.
const STATUS: &str = "\
Package: coreutils
Essential: yes
Status: install ok installed
Priority: required
Section: utils
Installed-Size: 18062
Maintainer: Michael Stone <mstone@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 9.1-1
Pre-Depends: libacl1 (>= 2.2.23), libattr1 (>= 1:2.4.44), libc6 (>= 2.34)
Description: GNU core utilities
 This package contains the basic file, shell and text manipulation
 utilities which are expected to exist on every operating system.
Homepage: https://www.gnu.org/software/coreutils/

Package: libfoo1
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 120
Maintainer: Foo Maintainers <foo@example.org>
Architecture: amd64
Multi-Arch: same
Source: foo
Version: 1.2-3
Depends: libc6 (>= 2.34)
Description: foo runtime library

Package: tzdata
Status: install ok installed
Priority: required
Section: localization
Installed-Size: 3296
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: all
Multi-Arch: foreign
Version: 2024a-0+deb12u1
Provides: tzdata-bookworm
Depends: debconf (>= 0.5) | debconf-2.0
Description: time zone and daylight-saving time data

Package: oldtool
Status: deinstall ok not-installed
Priority: optional
Architecture: amd64
";

/// The package files: (path as dpkg lists it, path on the filesystem).
const FILES: &[(&str, &str, &str)] = &[
    ("coreutils", "/usr/bin/ls", "/usr/bin/ls"),
    ("coreutils", "/bin/cat", "/usr/bin/cat"),
    ("coreutils", "/usr/bin/cp", "/usr/bin/cp"),
    (
        "libfoo1:amd64",
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
    ),
    (
        "tzdata",
        "/usr/share/zoneinfo/UTC",
        "/usr/share/zoneinfo/UTC",
    ),
];

/// Writes the dpkg database and the packages' files (40 KiB each) under `root`, with /bin a
/// link to usr/bin as on a merged-/usr system, and /app/data.db that no package owns.
fn install(root: &Path) {
    let info = root.join("var/lib/dpkg/info");
    std::fs::create_dir_all(&info).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), STATUS).unwrap();
    for pkg in ["coreutils", "libfoo1:amd64", "tzdata"] {
        // As dpkg writes it: every directory on the way, then the files.
        let mut list = std::collections::BTreeSet::from(["/.".to_string()]);
        for (_, listed, _) in FILES.iter().filter(|f| f.0 == pkg) {
            for d in Path::new(listed).ancestors().skip(1) {
                if d != Path::new("/") {
                    list.insert(d.display().to_string());
                }
            }
            list.insert(listed.to_string());
        }
        let list: Vec<String> = list.into_iter().collect();
        std::fs::write(info.join(format!("{pkg}.list")), list.join("\n") + "\n").unwrap();
        std::fs::write(info.join(format!("{pkg}.md5sums")), "").unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    for (i, (_, _, path)) in FILES.iter().enumerate() {
        let p = root.join(&path[1..]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, Rng(10 + i as u64).block(40960)).unwrap();
    }
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/data.db"), Rng(9).block(40960)).unwrap();
}

/// Rewrites 16 KiB in the middle of each file at `paths` (relative to `root`), in place.
fn rewrite(root: &Path, paths: &[&str]) {
    for (i, p) in paths.iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(&p[1..]))
            .unwrap();
        f.write_all_at(&Rng(100 + i as u64).block(16384), 8192)
            .unwrap();
        f.sync_all().unwrap();
    }
}

/// Session 1 makes the filesystem (`mkfs` with its arguments) and installs (`setup`: the
/// dpkg packages by default); session 2 rewrites `paths` (by default every dpkg package file and
/// /app/data.db), and (with `new_package`) adds a package to the dpkg status in place with its
/// file /usr/bin/newtool. Returns the scratch, the snapshot taken between the sessions, and
/// the 4 KiB blocks of each file after session 2 when `blocks_of` is given (XFS: from
/// xfs_bmap).
fn two_sessions(
    size: u64,
    mkfs: &[&str],
    new_package: bool,
    blocks_of: Option<fn(&Path) -> Vec<u64>>,
) -> (Scratch, PathBuf, Vec<(String, Vec<u64>)>) {
    let mut paths: Vec<&str> = FILES.iter().map(|f| f.2).collect();
    paths.push("/app/data.db");
    sessions(size, mkfs, &install, &paths, new_package, blocks_of)
}

/// As [`two_sessions`], with what session 1 installs and session 2 rewrites given.
fn sessions(
    size: u64,
    mkfs: &[&str],
    setup: &dyn Fn(&Path),
    paths: &[&str],
    new_package: bool,
    blocks_of: Option<fn(&Path) -> Vec<u64>>,
) -> (Scratch, PathBuf, Vec<(String, Vec<u64>)>) {
    let s = Scratch::new(size);
    s.init(4096, true);
    let mnt = s.dir.path().join("mnt");
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(st.dev()));
    st.mount(&mnt);
    setup(&mnt);
    st.umount();
    st.detach();
    svc.stop();
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    st.mount(&mnt);
    let mut paths = paths.to_vec();
    rewrite(&mnt, &paths);
    if new_package {
        let status = mnt.join("var/lib/dpkg/status");
        let mut text = std::fs::read_to_string(&status).unwrap();
        text.push_str("\nPackage: newpkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.1-1\nDescription: installed in the window\n");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&status)
            .unwrap();
        f.write_all_at(text.as_bytes(), 0).unwrap();
        f.sync_all().unwrap();
        std::fs::write(
            mnt.join("var/lib/dpkg/info/newpkg.list"),
            "/.\n/usr\n/usr/bin\n/usr/bin/newtool\n",
        )
        .unwrap();
        std::fs::write(mnt.join("usr/bin/newtool"), Rng(8).block(40960)).unwrap();
        paths.push("/usr/bin/newtool");
        paths.push("/var/lib/dpkg/status");
    }
    run(&mut Command::new("sync"));
    let blocks = blocks_of
        .map(|f| {
            paths
                .iter()
                .map(|p| (p.to_string(), f(&mnt.join(&p[1..]))))
                .collect()
        })
        .unwrap_or_default();
    st.umount();
    st.detach();
    svc.stop();
    (s, snap, blocks)
}

/// The packages of the report's only region: (name, version, arch, files) each, the
/// unowned files, the command and the damaged database paths.
fn packages(v: &Value) -> (Vec<Value>, Value, Value, Value) {
    let regions = v["packages"].as_array().expect("a packages array");
    assert_eq!(regions.len(), 1, "{regions:?}");
    let r = &regions[0];
    assert_eq!(
        (&r["region"], &r["database"]),
        (&json!("whole disk"), &json!("dpkg"))
    );
    (
        r["packages"].as_array().unwrap().clone(),
        r["unowned"].clone(),
        r["command"].clone(),
        r.get("database_damaged").cloned().unwrap_or(json!([])),
    )
}

/// The damaged regular files the report names.
fn damaged_files(v: &Value) -> Vec<String> {
    let mut files: Vec<String> = v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["owner"] == "file")
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    files
}

fn tools_ok(extra: &[&str]) -> bool {
    can_mount() && have("nbdfuse") && have("python3") && extra.iter().all(|t| have(t))
}

#[test]
fn report_lists_the_packages_owning_reverted_files_on_ext4() {
    if !tools_ok(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let (s, snap, _) = two_sessions(
        64 << 20,
        &["mkfs.ext4", "-q", "-F", "-b", "4096"],
        false,
        None,
    );
    // ls, cat (listed by dpkg as /bin/cat) and the library revert, with a file no package
    // owns; cp and tzdata's file were rewritten too but keep their new contents.
    let mut reverted = Vec::new();
    for p in [
        "/usr/bin/ls",
        "/usr/bin/cat",
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
        "/app/data.db",
    ] {
        let b = revert(&s.image, &snap, &["--fs-path", p]);
        assert_eq!(b.len(), 4, "{p}: the 16 KiB rewritten: {b:?}");
        reverted.extend(b);
    }
    let v = report_json(&s.image, &["--packages"]);
    assert_eq!(v["findings"].as_array().unwrap().len(), reverted.len());
    assert_eq!(
        damaged_files(&v),
        [
            "/app/data.db",
            "/usr/bin/cat",
            "/usr/bin/ls",
            "/usr/lib/x86_64-linux-gnu/libfoo.so.1"
        ]
    );
    let (pkgs, unowned, command, db) = packages(&v);
    assert_eq!(
        pkgs,
        vec![
            json!({"name": "coreutils", "version": "9.1-1", "arch": "amd64",
                   "files": ["/usr/bin/cat", "/usr/bin/ls"]}),
            json!({"name": "libfoo1", "version": "1.2-3", "arch": "amd64",
                   "files": ["/usr/lib/x86_64-linux-gnu/libfoo.so.1"]}),
        ]
    );
    assert_eq!(unowned, json!(["/app/data.db"]));
    assert_eq!(
        command,
        json!("apt-get install --reinstall coreutils libfoo1:amd64")
    );
    assert_eq!(db, json!([]));

    // The human report says the same.
    let o = bin()
        .args(["report", "--packages"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    for line in [
        "packages to reinstall:",
        "  [whole disk] dpkg database: 2 packages own 3 damaged files",
        "      coreutils 9.1-1 amd64: /usr/bin/cat, /usr/bin/ls",
        "      libfoo1 1.2-3 amd64: /usr/lib/x86_64-linux-gnu/libfoo.so.1",
        "      run: apt-get install --reinstall coreutils libfoo1:amd64",
        "      1 damaged file no package owns (restore from a backup): /app/data.db",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(!text.contains("tzdata"), "{text}");
}

#[test]
fn report_says_the_package_list_may_be_old_when_the_dpkg_status_reverted() {
    if !tools_ok(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let (s, snap, _) = two_sessions(
        64 << 20,
        &["mkfs.ext4", "-q", "-F", "-b", "4096"],
        true,
        None,
    );
    // The status reverts to before newpkg was installed, and so does newpkg's file.
    let mut reverted = revert(&s.image, &snap, &["--fs-path", "/var/lib/dpkg/status"]);
    assert!(!reverted.is_empty());
    reverted.extend(revert(&s.image, &snap, &["--fs-path", "/usr/bin/newtool"]));
    reverted.extend(revert(&s.image, &snap, &["--fs-path", "/usr/bin/ls"]));
    let v = report_json(&s.image, &["--packages"]);
    assert_eq!(v["findings"].as_array().unwrap().len(), reverted.len());
    let (pkgs, unowned, command, db) = packages(&v);
    assert_eq!(
        pkgs,
        vec![
            json!({"name": "coreutils", "version": "9.1-1", "arch": "amd64",
                    "files": ["/usr/bin/ls"]})
        ]
    );
    // The old status no longer lists newpkg: its file is owned by nobody it knows.
    assert_eq!(unowned, json!(["/usr/bin/newtool"]));
    assert_eq!(command, json!("apt-get install --reinstall coreutils"));
    assert_eq!(db, json!(["/var/lib/dpkg/status"]));
    let notes = v["packages"][0]["notes"].to_string();
    assert!(notes.contains("may itself be old"), "{notes}");
}

/// The 4 KiB blocks of a file on the mounted XFS (which starts at the disk's start).
fn xfs_blocks(p: &Path) -> Vec<u64> {
    bmap(p).into_values().collect()
}

#[test]
fn report_lists_the_packages_owning_reverted_files_on_xfs() {
    if !tools_ok(&["mkfs.xfs", "xfs_db", "xfs_bmap", "nbdkit"]) {
        return;
    }
    let (s, snap, blocks) = two_sessions(
        320 << 20,
        &["mkfs.xfs", "-q", "-f"],
        false,
        Some(xfs_blocks),
    );
    // The blocks of ls and the library that session 2 rewrote (16 KiB from 8 KiB on).
    let mut want: Vec<u64> = Vec::new();
    for (p, b) in &blocks {
        if p == "/usr/bin/ls" || p == "/usr/lib/x86_64-linux-gnu/libfoo.so.1" {
            assert_eq!(b.len(), 10, "{p}: {b:?}");
            want.extend(&b[2..6]);
        }
    }
    let list: Vec<String> = want.iter().map(|b| b.to_string()).collect();
    let reverted = revert(&s.image, &snap, &["--blocks", &list.join(",")]);
    assert_eq!(reverted.len(), 8, "{reverted:?}");
    let v = report_json(&s.image, &["--packages"]);
    assert_eq!(
        damaged_files(&v),
        ["/usr/bin/ls", "/usr/lib/x86_64-linux-gnu/libfoo.so.1"]
    );
    let (pkgs, unowned, command, _) = packages(&v);
    assert_eq!(
        pkgs,
        vec![
            json!({"name": "coreutils", "version": "9.1-1", "arch": "amd64",
                   "files": ["/usr/bin/ls"]}),
            json!({"name": "libfoo1", "version": "1.2-3", "arch": "amd64",
                   "files": ["/usr/lib/x86_64-linux-gnu/libfoo.so.1"]}),
        ]
    );
    assert_eq!(unowned, json!([]));
    assert_eq!(
        command,
        json!("apt-get install --reinstall coreutils libfoo1:amd64")
    );
}

/// A real RPM package (built by rpmbuild: /usr/bin/hello and /usr/share/hello/README)
/// recorded in a new rpmdb.sqlite by rpm itself, as on RHEL 9; returns the database file.
fn rpmdb(dir: &Path) -> PathBuf {
    let spec = dir.join("hello.spec");
    std::fs::write(
        &spec,
        "Name: hello\nVersion: 2.12.1\nRelease: 5.el9\nSummary: prints a greeting\nLicense: GPLv3+\nBuildArch: x86_64\n\
         %description\nThe GNU hello program.\n\
         %install\nmkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/hello\n\
         head -c 40960 /dev/urandom > %{buildroot}/usr/bin/hello\necho hello > %{buildroot}/usr/share/hello/README\n\
         %files\n/usr/bin/hello\n/usr/share/hello/README\n",
    )
    .unwrap();
    let top = dir.join("rpmbuild");
    run(Command::new("rpmbuild")
        .args(["-bb", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec));
    let rpm = top.join("RPMS/x86_64/hello-2.12.1-5.el9.x86_64.rpm");
    let db = dir.join("rpmdb");
    std::fs::create_dir_all(&db).unwrap();
    let rpm_db = |args: &[&str]| {
        run(Command::new("rpm")
            .arg("--dbpath")
            .arg(&db)
            .args(["--define", "_db_backend sqlite"])
            .args(args));
    };
    rpm_db(&["--initdb"]);
    rpm_db(&[
        "-i",
        "--justdb",
        "--nodeps",
        "--ignorearch",
        "--ignoreos",
        rpm.to_str().unwrap(),
    ]);
    db.join("rpmdb.sqlite")
}

#[test]
fn report_lists_the_rpm_packages_owning_reverted_files() {
    if !tools_ok(&["mkfs.ext4", "debugfs", "rpm", "rpmbuild"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let db = rpmdb(work.path());
    let setup = |root: &Path| {
        std::fs::create_dir_all(root.join("var/lib/rpm")).unwrap();
        std::fs::copy(&db, root.join("var/lib/rpm/rpmdb.sqlite")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/hello")).unwrap();
        std::fs::write(root.join("usr/bin/hello"), Rng(1).block(40960))
            .or_else(|_| {
                std::fs::create_dir_all(root.join("usr/bin"))?;
                std::fs::write(root.join("usr/bin/hello"), Rng(1).block(40960))
            })
            .unwrap();
        std::fs::write(root.join("usr/share/hello/README"), "hello\n").unwrap();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/data.db"), Rng(9).block(40960)).unwrap();
    };
    let (s, snap, _) = sessions(
        64 << 20,
        &["mkfs.ext4", "-q", "-F", "-b", "4096"],
        &setup,
        &["/usr/bin/hello", "/app/data.db"],
        false,
        None,
    );
    for p in ["/usr/bin/hello", "/app/data.db"] {
        assert_eq!(revert(&s.image, &snap, &["--fs-path", p]).len(), 4, "{p}");
    }
    let v = report_json(&s.image, &["--packages"]);
    let r = &v["packages"][0];
    assert_eq!(v["packages"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(r["database"], "rpm", "{r}");
    assert_eq!(
        r["packages"],
        json!([{"name": "hello", "version": "2.12.1-5.el9", "arch": "x86_64",
                "files": ["/usr/bin/hello"]}])
    );
    assert_eq!(r["unowned"], json!(["/app/data.db"]));
    assert_eq!(r["command"], json!("dnf reinstall hello.x86_64"));
}

/// The dpkg packages plus `wrapper`, which diverts coreutils' /usr/bin/ls to
/// /usr/bin/ls.distrib (as dpkg-divert does) and installs its own /usr/bin/ls.
fn install_with_diversion(root: &Path) {
    install(root);
    let status = root.join("var/lib/dpkg/status");
    let mut text = std::fs::read_to_string(&status).unwrap();
    text.push_str("\nPackage: wrapper\nStatus: install ok installed\nArchitecture: all\nVersion: 1.0-1\nDescription: wraps ls\n");
    std::fs::write(&status, text).unwrap();
    std::fs::write(
        root.join("var/lib/dpkg/info/wrapper.list"),
        "/.\n/usr\n/usr/bin\n/usr/bin/ls\n",
    )
    .unwrap();
    std::fs::write(
        root.join("var/lib/dpkg/diversions"),
        "/usr/bin/ls\n/usr/bin/ls.distrib\nwrapper\n",
    )
    .unwrap();
    std::fs::rename(root.join("usr/bin/ls"), root.join("usr/bin/ls.distrib")).unwrap();
    std::fs::write(root.join("usr/bin/ls"), Rng(77).block(40960)).unwrap();
}

/// A path diverted by dpkg-divert: the reverted file at the diverted place is the package's
/// that lists the path (coreutils), the one at the path the diverting package's (wrapper).
#[test]
fn report_follows_dpkg_diversions_to_the_package_owning_each_file() {
    if !tools_ok(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let paths = ["/usr/bin/ls", "/usr/bin/ls.distrib"];
    let (s, snap, _) = sessions(
        64 << 20,
        &["mkfs.ext4", "-q", "-F", "-b", "4096"],
        &install_with_diversion,
        &paths,
        false,
        None,
    );
    for p in paths {
        let b = revert(&s.image, &snap, &["--fs-path", p]);
        assert_eq!(b.len(), 4, "{p}: the 16 KiB rewritten: {b:?}");
    }
    let v = report_json(&s.image, &["--packages"]);
    assert_eq!(damaged_files(&v), ["/usr/bin/ls", "/usr/bin/ls.distrib"]);
    let (pkgs, unowned, command, _) = packages(&v);
    assert_eq!(
        pkgs,
        vec![
            json!({"name": "coreutils", "version": "9.1-1", "arch": "amd64",
                   "files": ["/usr/bin/ls.distrib"]}),
            json!({"name": "wrapper", "version": "1.0-1", "arch": "all",
                   "files": ["/usr/bin/ls"]}),
        ]
    );
    assert_eq!(unowned, json!([]));
    assert_eq!(
        command,
        json!("apt-get install --reinstall coreutils wrapper")
    );
}
