//! The packages that own damaged files (`report --packages`): inside each filesystem the
//! report maps, the package database is read through the same reader that mapped its blocks
//! ([`Filesystem::read_files`]), and the damaged files are looked up in it, giving a list to
//! reinstall and the damaged files no package owns (those come from backups, not packages).
//!
//! Debian and Ubuntu: /var/lib/dpkg/status names the installed packages (with their version
//! and architecture) and /var/lib/dpkg/info/PKG.list (PKG:ARCH.list for `Multi-Arch: same`)
//! the paths each one installed. /var/lib/dpkg/diversions moves a path one package lists to
//! another place when any other package installs it (`dpkg-divert`): the file at the diverted
//! place is that other package's, and the file at the path is the diverting package's (or, for
//! a local diversion, the administrator's). When the damaged blocks include the database
//! itself, the list is said to be possibly old rather than trusted silently.
//!
//! RPM (RHEL, Fedora): the database (rpmdb.sqlite, or Berkeley DB `Packages` on RHEL 7 and 8)
//! is copied out and listed by the `rpm` tool (`--dbpath`), which reads every backend; nothing
//! here parses its headers. Without `rpm`, or when it cannot read the copy, the report says
//! the database was found and how to read it.

use super::deadline::run_with_deadline;
use super::fs::Filesystem;
use super::owners::{FileRef, MappedFinding};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

/// The dpkg database of installed packages.
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Where dpkg keeps each package's list of paths.
const DPKG_INFO: &str = "/var/lib/dpkg/info";
/// dpkg's diversions: per diversion three lines, the path, where it is diverted to, and the
/// package that diverted it (":" for a local diversion).
const DPKG_DIVERSIONS: &str = "/var/lib/dpkg/diversions";
/// RPM databases: rpmdb.sqlite (RHEL 9, Fedora 33 on; Fedora 36 on keeps it in
/// /usr/lib/sysimage/rpm) and Berkeley DB (RHEL 7 and 8).
const RPM_DBS: &[&str] = &[
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/var/lib/rpm/rpmdb.sqlite",
    "/var/lib/rpm/Packages",
];
/// Largest package database file read (a large Debian system's status is a few MiB).
const MAX_DB: u64 = 256 << 20;
/// Files shown per package, and unowned files shown, in the human report.
pub(super) const SHOWN: usize = 5;

/// One installed package owning damaged files.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture ("amd64", "all", ...).
    pub arch: String,
    /// Its damaged files (paths in the filesystem).
    pub files: Vec<String>,
    /// How to name it to the package manager (`name` or `name:arch`).
    #[serde(skip)]
    pub(super) spec: String,
}

/// The packages of one filesystem that own damaged files.
#[derive(Clone, Debug, Serialize)]
pub struct RegionPackages {
    /// The region, as in the affected list.
    pub region: String,
    /// The package database read ("dpkg"), or found and not read ("rpm").
    pub database: &'static str,
    /// Packages owning damaged files, by name.
    pub packages: Vec<Package>,
    /// The command that reinstalls them all, run on the host (or in a chroot of this
    /// filesystem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Damaged files no package owns: restore them from a backup.
    pub unowned: Vec<String>,
    /// Paths of the package database itself with damaged blocks: the list may be old.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub database_damaged: Vec<String>,
    /// What the reader of the list must know (a damaged database, an unread RPM database).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One stanza of the dpkg status file.
#[derive(Debug, PartialEq, Eq)]
struct Installed {
    name: String,
    version: String,
    arch: String,
    multi_arch_same: bool,
}

/// The packages dpkg's status file says have files on the system (any state but
/// not-installed; config-files keeps its conffiles).
fn parse_status(text: &str) -> Vec<Installed> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let (Some(name), Some(status)) = (fields.get("Package"), fields.get("Status")) else {
            continue;
        };
        if status.split_whitespace().nth(2).unwrap_or("not-installed") == "not-installed" {
            continue;
        }
        out.push(Installed {
            name: name.to_string(),
            version: fields.get("Version").unwrap_or(&"").to_string(),
            arch: fields.get("Architecture").unwrap_or(&"").to_string(),
            multi_arch_same: fields.get("Multi-Arch") == Some(&"same"),
        });
    }
    out
}

/// The path of `p`'s file list, and the other spelling dpkg may have used.
fn list_paths(p: &Installed) -> [String; 2] {
    let plain = format!("{DPKG_INFO}/{}.list", p.name);
    let qualified = format!("{DPKG_INFO}/{}:{}.list", p.name, p.arch);
    if p.multi_arch_same {
        [qualified, plain]
    } else {
        [plain, qualified]
    }
}

/// The paths a path listed by dpkg may have on the filesystem: itself and, on a merged-/usr
/// system (where /bin is a link to /usr/bin), its /usr twin.
fn aliases(listed: &str) -> impl Iterator<Item = String> + '_ {
    const MERGED: &[&str] = &["/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"];
    let twin = MERGED
        .iter()
        .find(|d| listed.starts_with(*d))
        .map(|_| format!("/usr{listed}"));
    std::iter::once(listed.to_string()).chain(twin)
}

/// The diversions of dpkg's diversions file: path to (where it goes, the diverting package).
fn parse_diversions(text: &str) -> HashMap<String, (String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks_exact(3)
        .map(|d| (d[0].to_string(), (d[1].to_string(), d[2].to_string())))
        .collect()
}

/// Where the path `listed` of package `pkg` is on the filesystem: its diverted place when
/// another package (or the administrator) diverted it, else itself.
fn placed<'a>(
    diversions: &'a HashMap<String, (String, String)>,
    listed: &'a str,
    pkg: &str,
) -> &'a str {
    match diversions.get(listed) {
        Some((to, by)) if by != pkg => to,
        _ => listed,
    }
}

/// The directories a package database lives in.
fn db_dirs(database: &str) -> &'static [&'static str] {
    match database {
        "dpkg" => &["/var/lib/dpkg"],
        _ => &["/var/lib/rpm", "/usr/lib/sysimage/rpm"],
    }
}

/// Whether a damaged owner's path or symptom touches the database of `database` (its files,
/// its directories, or an inode table block holding their inodes).
fn touches(database: &str, path: Option<&str>, symptom: &str) -> bool {
    db_dirs(database).iter().any(|d| {
        path.is_some_and(|p| p == *d || p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
            || symptom.contains(&format!("{d}/"))
    })
}

/// The packages owning the damaged files of each region whose filesystem is readable
/// (`filesystems`: region name and its filesystem). Regions without a damaged file are
/// left out; trouble reading a database is pushed to `notes`.
pub(super) fn find(
    filesystems: &[(&str, &Filesystem)],
    mapped: &[MappedFinding],
    notes: &mut Vec<String>,
) -> Vec<RegionPackages> {
    let mut out = Vec::new();
    for &(region, fs) in filesystems {
        let refs: Vec<&FileRef> = mapped
            .iter()
            .flat_map(|f| &f.files)
            .filter(|r| r.region == region)
            .collect();
        let damaged: BTreeSet<String> = refs
            .iter()
            .filter(|r| r.owner == "file")
            .filter_map(|r| r.path.clone())
            .collect();
        if damaged.is_empty() {
            continue;
        }
        match of_region(region, fs, &damaged, &refs) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => notes.push(format!(
                "{region}: --packages: no package database found (neither {DPKG_STATUS} nor an RPM database): the damaged files are not matched to packages"
            )),
            Err(e) => notes.push(format!(
                "{region}: --packages: the package database could not be read: {e}"
            )),
        }
    }
    out
}

/// An installed package, as the package manager is asked to reinstall it.
struct Pkg {
    name: String,
    version: String,
    arch: String,
    /// `name`, `name:arch` (dpkg Multi-Arch: same) or `name.arch` (rpm).
    spec: String,
}

/// The packages of one region's filesystem owning `damaged` files (`refs`: the region's
/// damaged owners); None when it holds no package database.
fn of_region(
    region: &str,
    fs: &Filesystem,
    damaged: &BTreeSet<String>,
    refs: &[&FileRef],
) -> Result<Option<RegionPackages>, String> {
    let mut probe = vec![DPKG_STATUS.to_string()];
    probe.extend(RPM_DBS.iter().map(|s| s.to_string()));
    let found = fs.read_files(&probe, MAX_DB)?;
    let (database, pkgs, owners, mut notes) = if let Some(status) = found.get(DPKG_STATUS) {
        let (pkgs, owners, notes) = dpkg(fs, status, damaged)?;
        ("dpkg", pkgs, owners, notes)
    } else if let Some(db) = RPM_DBS.iter().find(|p| found.contains_key(**p)) {
        match rpm(db, &found[*db], damaged) {
            Ok((pkgs, owners)) => ("rpm", pkgs, owners, Vec::new()),
            Err(e) => return Ok(Some(rpm_unread(region, db, &e, damaged))),
        }
    } else {
        return Ok(None);
    };
    let own = |p: &str| touches(database, Some(p), "");
    let mut by_pkg: BTreeMap<(String, String), Package> = BTreeMap::new();
    let mut unowned = Vec::new();
    for path in damaged {
        let Some(who) = owners.get(path) else {
            // The database's own files are said as such, below.
            if !own(path) {
                unowned.push(path.clone());
            }
            continue;
        };
        for &i in who {
            let p = &pkgs[i];
            by_pkg
                .entry((p.name.clone(), p.arch.clone()))
                .or_insert_with(|| Package {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    arch: p.arch.clone(),
                    files: Vec::new(),
                    spec: p.spec.clone(),
                })
                .files
                .push(path.clone());
        }
    }
    let packages: Vec<Package> = by_pkg.into_values().collect();
    let command = (!packages.is_empty()).then(|| {
        let specs: Vec<&str> = packages.iter().map(|p| p.spec.as_str()).collect();
        let tool = match database {
            "dpkg" => "apt-get install --reinstall",
            _ => "dnf reinstall",
        };
        format!("{tool} {}", specs.join(" "))
    });
    let database_damaged: Vec<String> = refs
        .iter()
        .filter(|r| touches(database, r.path.as_deref(), &r.symptom))
        .map(|r| r.path.clone().unwrap_or_else(|| r.owner.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !database_damaged.is_empty() {
        let logs = match database {
            "dpkg" => {
                "/var/log/dpkg.log and /var/log/apt/history.log, and /var/lib/dpkg/status-old"
            }
            _ => "/var/log/dnf.rpm.log and `dnf history`",
        };
        notes.push(format!(
            "the {database} database itself has damaged blocks ({}): this list comes from it and may itself be old: packages installed, upgraded or removed in the window may be missing or shown at their old version; compare with {logs}",
            database_damaged.join(", ")
        ));
    }
    if command.is_some() {
        notes.push(match database {
            "dpkg" => "`dpkg --verify` (or `debsums -c`) afterwards checks every packaged file against its md5sums, including damage the ledger could not see".into(),
            _ => "`rpm -Va` afterwards checks every packaged file against its digest, including damage the ledger could not see".into(),
        });
    }
    Ok(Some(RegionPackages {
        region: region.to_string(),
        database,
        packages,
        command,
        unowned,
        database_damaged,
        notes,
    }))
}

/// For each damaged path, the packages (their indexes) that own it.
type Owners = HashMap<String, Vec<usize>>;

/// The dpkg packages (from `status`) and which of them own each damaged file (from their
/// .list files), with a note on packages whose list is missing.
fn dpkg(
    fs: &Filesystem,
    status: &[u8],
    damaged: &BTreeSet<String>,
) -> Result<(Vec<Pkg>, Owners, Vec<String>), String> {
    let installed = parse_status(&String::from_utf8_lossy(status));
    // Each package's list under the name dpkg most likely used, then the other for the rest.
    let mut lists: HashMap<usize, Vec<u8>> = HashMap::new();
    for pass in 0..2 {
        let ask: Vec<(usize, String)> = installed
            .iter()
            .enumerate()
            .filter(|(i, _)| !lists.contains_key(i))
            .map(|(i, p)| (i, list_paths(p)[pass].clone()))
            .collect();
        let paths: Vec<String> = ask.iter().map(|(_, p)| p.clone()).collect();
        let mut got = fs.read_files(&paths, MAX_DB)?;
        for (i, p) in ask {
            if let Some(data) = got.remove(&p) {
                lists.insert(i, data);
            }
        }
    }
    let diversions = fs
        .read_files(&[DPKG_DIVERSIONS.to_string()], MAX_DB)?
        .remove(DPKG_DIVERSIONS)
        .map(|d| parse_diversions(&String::from_utf8_lossy(&d)))
        .unwrap_or_default();
    let mut owners: Owners = HashMap::new();
    for (&i, data) in &lists {
        for line in String::from_utf8_lossy(data).lines() {
            let at = placed(&diversions, line.trim_end(), &installed[i].name);
            for path in aliases(at) {
                if damaged.contains(&path) {
                    owners.entry(path).or_default().push(i);
                }
            }
        }
    }
    let mut notes = Vec::new();
    let missing = installed.len() - lists.len();
    if missing > 0 {
        notes.push(format!(
            "{missing} of the {} installed packages in {DPKG_STATUS} have no file list in {DPKG_INFO}: files they own are counted as owned by no package",
            installed.len()
        ));
    }
    let pkgs = installed
        .into_iter()
        .map(|p| Pkg {
            spec: if p.multi_arch_same {
                format!("{}:{}", p.name, p.arch)
            } else {
                p.name.clone()
            },
            name: p.name,
            version: p.version,
            arch: p.arch,
        })
        .collect();
    Ok((pkgs, owners, notes))
}

/// How long `rpm` may take to list a copied database.
const RPM_DEADLINE: Duration = Duration::from_secs(120);

/// The RPM packages and which of them own each damaged file, asked of the `rpm` tool on a
/// copy of the database (`db`, read from the filesystem as `data`): rpm reads every backend
/// (sqlite, and Berkeley DB read-only), where anything else would have to parse its headers.
fn rpm(db: &str, data: &[u8], damaged: &BTreeSet<String>) -> Result<(Vec<Pkg>, Owners), String> {
    let dir = tempfile::Builder::new()
        .prefix("lostwrite-rpmdb")
        .tempdir()
        .map_err(|e| format!("making a directory for a copy of the RPM database: {e}"))?;
    let (file, backend) = if db.ends_with(".sqlite") {
        ("rpmdb.sqlite", "sqlite")
    } else {
        ("Packages", "bdb_ro")
    };
    std::fs::write(dir.path().join(file), data)
        .map_err(|e| format!("copying the RPM database: {e}"))?;
    let out = run_with_deadline(
        Command::new("rpm")
            .arg("--dbpath")
            .arg(dir.path())
            .args(["--define", &format!("_db_backend {backend}"), "-qa", "--qf"])
            .arg(
                "[%{=NAME}\\t%{=EPOCHNUM}\\t%{=VERSION}-%{=RELEASE}\\t%{=ARCH}\\t%{FILENAMES}\\n]",
            ),
        String::new(),
        RPM_DEADLINE,
    )?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "rpm could not list it ({}): {}",
            out.status,
            out.stderr.trim()
        ));
    }
    let mut pkgs: Vec<Pkg> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut owners: Owners = HashMap::new();
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.splitn(5, '\t').collect();
        let [name, epoch, vr, arch, path] = f[..] else {
            continue;
        };
        let key = format!("{name}\t{epoch}\t{vr}\t{arch}");
        let i = *index.entry(key).or_insert_with(|| {
            pkgs.push(Pkg {
                name: name.to_string(),
                version: if epoch == "0" {
                    vr.to_string()
                } else {
                    format!("{epoch}:{vr}")
                },
                arch: arch.to_string(),
                spec: format!("{name}.{arch}"),
            });
            pkgs.len() - 1
        });
        for p in aliases(path) {
            if damaged.contains(&p) {
                owners.entry(p).or_default().push(i);
            }
        }
    }
    Ok((pkgs, owners))
}

impl RegionPackages {
    /// The human form: each package with its damaged files (at most [`SHOWN`]), the command,
    /// the damaged files no package owns, and the notes.
    pub(super) fn write_human(&self, o: &mut String) {
        use std::fmt::Write as _;
        let files: usize = self.packages.iter().map(|p| p.files.len()).sum();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        writeln!(
            o,
            "  [{}] {} database: {} own{} {}",
            self.region,
            self.database,
            plural(self.packages.len(), "package", "packages"),
            if self.packages.len() == 1 { "s" } else { "" },
            plural(files, "damaged file", "damaged files")
        )
        .ok();
        let shown = |list: &[String]| {
            let mut s = list
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if list.len() > SHOWN {
                write!(s, ", ... ({} in all)", list.len()).ok();
            }
            s
        };
        for p in &self.packages {
            writeln!(
                o,
                "      {} {} {}: {}",
                p.name,
                p.version,
                p.arch,
                shown(&p.files)
            )
            .ok();
        }
        if let Some(c) = &self.command {
            writeln!(o, "      run: {c}").ok();
        }
        if !self.unowned.is_empty() {
            let them = if self.unowned.len() == 1 {
                "it"
            } else {
                "them"
            };
            let why = if self.database_damaged.is_empty() {
                "restore from a backup".to_string()
            } else {
                format!("restore from a backup, unless a package the old list misses owns {them}")
            };
            writeln!(
                o,
                "      {} no package owns ({why}): {}",
                plural(self.unowned.len(), "damaged file", "damaged files"),
                shown(&self.unowned)
            )
            .ok();
        }
        for n in &self.notes {
            writeln!(o, "      {n}").ok();
        }
    }
}

/// An RPM database found at `db` and not read (`why`): how to read it.
fn rpm_unread(region: &str, db: &str, why: &str, damaged: &BTreeSet<String>) -> RegionPackages {
    let sample: Vec<&str> = damaged.iter().take(SHOWN).map(|s| s.as_str()).collect();
    RegionPackages {
        region: region.to_string(),
        database: "rpm",
        packages: Vec::new(),
        command: None,
        unowned: Vec::new(),
        database_damaged: Vec::new(),
        notes: vec![format!(
            "an RPM database was found ({db}) and could not be read ({why}): with the filesystem mounted read-only at /mnt, `rpm --root /mnt -qf FILE...` names the package of each damaged file ({}{}), and `rpm --root /mnt -V PACKAGE` checks its files; then `dnf reinstall PACKAGE...` on the host",
            sample.join(" "),
            if damaged.len() > SHOWN { " ..." } else { "" }
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_stanzas_parse() {
        let text = "Package: libc6\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nMulti-Arch: same\nVersion: 2.36-9\nDescription: GNU C Library\n a continuation: line\n\nPackage: gone\nStatus: deinstall ok not-installed\nArchitecture: all\n\nPackage: cfg\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1.0\n";
        let p = parse_status(text);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            Installed {
                name: "libc6".into(),
                version: "2.36-9".into(),
                arch: "amd64".into(),
                multi_arch_same: true,
            }
        );
        assert_eq!(list_paths(&p[0])[0], "/var/lib/dpkg/info/libc6:amd64.list");
        assert_eq!(list_paths(&p[1])[0], "/var/lib/dpkg/info/cfg.list");
    }

    #[test]
    fn a_diverted_path_is_the_diverting_packages_and_its_new_place_the_others() {
        let d = parse_diversions(
            "/usr/bin/tool\n/usr/bin/tool.distrib\nwrapper\n/etc/x.conf\n/etc/x.conf.orig\n:\n",
        );
        assert_eq!(
            placed(&d, "/usr/bin/tool", "tools"),
            "/usr/bin/tool.distrib"
        );
        assert_eq!(placed(&d, "/usr/bin/tool", "wrapper"), "/usr/bin/tool");
        assert_eq!(placed(&d, "/etc/x.conf", "x"), "/etc/x.conf.orig");
        assert_eq!(placed(&d, "/usr/bin/ls", "coreutils"), "/usr/bin/ls");
        // A cut file keeps the whole diversions before the cut.
        assert_eq!(parse_diversions("/a\n/b\nq\n/c\n").len(), 1);
    }

    #[test]
    fn merged_usr_twins_and_dpkg_paths() {
        assert_eq!(
            aliases("/bin/ls").collect::<Vec<_>>(),
            vec!["/bin/ls", "/usr/bin/ls"]
        );
        assert_eq!(aliases("/usr/bin/ls").count(), 1);
        assert_eq!(aliases("/binary").count(), 1);
        assert!(touches("dpkg", Some("/var/lib/dpkg/status"), ""));
        assert!(touches("dpkg", Some("/var/lib/dpkg"), ""));
        assert!(touches(
            "dpkg",
            None,
            "inodes 17-32 (/var/lib/dpkg/status): ..."
        ));
        assert!(!touches("dpkg", Some("/var/lib/dpkgx"), ""));
        assert!(!touches("dpkg", Some("/var/lib/rpm/rpmdb.sqlite"), ""));
        assert!(touches(
            "rpm",
            Some("/usr/lib/sysimage/rpm/rpmdb.sqlite"),
            ""
        ));
    }
}
