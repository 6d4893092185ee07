//! The layering, checked: the NBD protocol layer (src/nbd/) is the bottom of the crate and
//! names nothing above it. A `crate::` path there may only lead back into `nbd`; anything
//! else (`crate::service`, `crate::error`, ...) makes an arrow that runs up (docs/DESIGN.md,
//! section 6). Likewise `service` (with `metrics.rs`) and `verify` share classification and
//! the findings log through `findings`, below both, and never import each other.

use std::path::{Path, PathBuf};

/// Top-level modules the protocol layer may name: itself only.
const ALLOWED: &[&str] = &["nbd"];

/// Every .rs file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The first path segments after each `crate::` in `code` (comments removed), with the
/// segments of a `crate::{a, b::c}` group each counted; and `super::super` (which climbs out
/// of a file directly under src/nbd/) as the segment "super".
fn named_modules(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // `pub(crate)` and friends are not paths; `lostwrite_crate::` is not this crate.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[i + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            out.extend(items.iter().map(|s| ident(s)).filter(|s| !s.is_empty()));
        } else {
            out.push(ident(rest));
        }
    }
    if code.contains("super::super") {
        out.push("super".into());
    }
    out
}

/// The modules outside the protocol layer that `code` names.
fn offending(code: &str) -> Vec<String> {
    named_modules(code)
        .into_iter()
        .filter(|m| !ALLOWED.contains(&m.as_str()))
        .collect()
}

#[test]
fn the_protocol_layer_imports_nothing_from_the_rest_of_the_crate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nbd");
    let files = rust_files(&dir);
    assert!(files.len() >= 4, "src/nbd/ holds the protocol: {files:?}");
    let mut bad = Vec::new();
    for f in files {
        let code = std::fs::read_to_string(&f).unwrap();
        for m in offending(&code) {
            bad.push(format!("{} names crate::{m}", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the NBD protocol layer must not import from the layers above it:\n{}",
        bad.join("\n")
    );
}

/// Every file of `rel` under src/ (a folder or one file) that names one of `forbidden`, as
/// "file names crate::module".
fn naming(rel: &str, forbidden: &[&str]) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel);
    let files = if path.is_dir() {
        rust_files(&path)
    } else {
        vec![path]
    };
    assert!(!files.is_empty(), "src/{rel} exists");
    let mut bad = Vec::new();
    for f in files {
        let code = std::fs::read_to_string(&f).unwrap();
        for m in named_modules(&code) {
            if forbidden.contains(&m.as_str()) {
                bad.push(format!("{} names crate::{m}", f.display()));
            }
        }
    }
    bad
}

#[test]
fn service_and_verify_share_findings_without_importing_each_other() {
    // The check sees a path in code as well as in a `use` group.
    assert_eq!(
        named_modules(
            "let f = crate::verify::run(l, d, o);\nuse crate::{findings, verify::report};"
        ),
        ["verify", "findings", "verify"]
    );
    let mut bad = Vec::new();
    bad.extend(naming("service", &["verify"]));
    bad.extend(naming("metrics.rs", &["verify"]));
    bad.extend(naming("verify", &["service"]));
    // Below both: it may use neither.
    bad.extend(naming("findings", &["verify", "service", "metrics"]));
    assert!(
        bad.is_empty(),
        "classification and the findings log live in findings/, below service and verify:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_layering_check_catches_an_upward_import() {
    assert_eq!(offending("use crate::service::Export;"), ["service"]);
    assert_eq!(offending("use crate::error::{Error, Result};"), ["error"]);
    assert_eq!(
        offending("use crate::{nbd::proto, ledger::Ledger};"),
        ["ledger"]
    );
    assert_eq!(offending("let n = crate::scan::default_jobs();"), ["scan"]);
    assert_eq!(
        offending("use super::super::device::BlockDevice;"),
        ["super"]
    );
    // Paths back into the protocol, visibility and comments are fine.
    assert!(offending("use crate::nbd::proto::cmd;").is_empty());
    assert!(offending("pub(crate) fn f() {}").is_empty());
    assert!(offending("// see crate::service::Export").is_empty());
}

/// The floors of docs/DESIGN.md's picture of the layers (section 6), lowest first: a module
/// may name modules on lower floors, never one on its own floor or above. The binary's
/// `cli/` (floor 8) names the library as `lostwrite::`, not `crate::`, and is not checked here.
/// The picture's floor 0 is two here: `block`, `clock` and `logsink` may use `error` (whose
/// `Error` and `Result` lib.rs re-exports as `crate::Error`, `crate::Result`).
const FLOORS: &[&[&str]] = &[
    &["nbd", "error", "Error", "Result"],
    &["block", "clock", "logsink", "locks"],
    &["device"],
    &["scan"],
    &["ledger"],
    &["findings"],
    &["service", "verify"],
    &["server", "metrics", "forensics"],
    &["repair"],
    &["host"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

#[test]
fn no_module_imports_from_its_own_floor_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main", "cli"].contains(&name.as_str()) {
            continue;
        }
        let Some(own) = floor_of(&name) else {
            bad.push(format!(
                "src/{name} is on no floor: add it to FLOORS here and to the picture in docs/DESIGN.md"
            ));
            continue;
        };
        seen.push(name.clone());
        let files = if p.is_dir() { rust_files(&p) } else { vec![p] };
        for f in files {
            let code = std::fs::read_to_string(&f).unwrap();
            for m in named_modules(&code) {
                if m == name || m == "super" {
                    continue;
                }
                match floor_of(&m) {
                    Some(fl) if fl < own => {}
                    Some(fl) => bad.push(format!(
                        "{} (floor {own}) names crate::{m} (floor {fl})",
                        f.display()
                    )),
                    None => bad.push(format!("{} names crate::{m}, on no floor", f.display())),
                }
            }
        }
    }
    assert!(seen.len() >= 15, "the modules of src/: {seen:?}");
    assert!(
        bad.is_empty(),
        "every import must point down the floors of docs/DESIGN.md section 6:\n{}",
        bad.join("\n")
    );
}
