//! The host in process: the wiring `serve` and `demo` share (lostwrite::host), driven without
//! the binary. A start serves and a stop closes every session cleanly and says so as data; a
//! config's export that cannot open keeps no other offline, while the command line's one fails
//! the start; a signal before any export opens ends the start with nothing opened.

use crate::helpers::*;
use lostwrite::host::{ExportSpec, Host, Outcome, ServeConfig, Started};
use lostwrite::ledger::history::{self, SessionEnd};
use lostwrite::ledger::Access;
use lostwrite::nbd::client::Client;
use std::collections::HashSet;

/// A one-export config serving `s` on a unix socket beside it.
fn config_of(s: &Scratch) -> ServeConfig {
    ServeConfig {
        socket: Some(s.dir.path().join("host.sock")),
        export: vec![ExportSpec {
            name: "disk".into(),
            device: s.image.display().to_string(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn serving(started: lostwrite::Result<Started>) -> Host {
    match started.unwrap() {
        Started::Serving(h) => h,
        Started::Interrupted(s) => panic!("interrupted by {s}"),
    }
}

/// The service sessions of `s`'s ledger (not session 0, `init`'s) and how each ended.
fn sessions(s: &Scratch) -> Vec<SessionEnd> {
    let l = s.open(Access::Read).unwrap();
    let h = history::collect(&l, &HashSet::new(), &HashSet::new()).unwrap();
    h.sessions
        .values()
        .filter(|x| x.id > 0)
        .map(|x| x.end)
        .collect()
}

#[test]
fn a_host_serves_its_exports_and_its_stop_reports_each_closed_cleanly() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let config = config_of(&s);
    let sock = config.socket.clone().unwrap();
    let host = serving(Host::start(config, &crossbeam_channel::never()));
    assert_eq!(host.exports().count(), 1);
    assert_eq!(host.interrupted(), None);
    let mut c = Client::connect_unix(&sock, "disk").unwrap();
    c.write(0, &Rng(5).block(8192), false).unwrap();
    c.flush().unwrap();
    c.disconnect().unwrap();
    let closed = host.stop().unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].name, "disk");
    assert!(closed[0].is_clean(), "{:?}", closed[0].outcome);
    assert_eq!(
        (closed[0].summary.writes, closed[0].summary.written_bytes),
        (1, 8192)
    );
    assert!(closed[0]
        .summary
        .to_string()
        .starts_with("1 writes (8192 bytes), 0 reads, "));
    assert!(matches!(sessions(&s)[..], [SessionEnd::Clean { .. }]));
    assert!(s.verify().findings.is_empty());
}

#[test]
fn an_export_that_cannot_open_keeps_no_other_offline_only_with_a_config_file() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let missing = ExportSpec {
        name: "gone".into(),
        device: s.dir.path().join("no-such-disk").display().to_string(),
        ..Default::default()
    };
    // As the command line has it: the one export's failure is the start's.
    let mut config = config_of(&s);
    config.export = vec![missing];
    let sock = config.socket.clone().unwrap();
    assert!(Host::start(config, &crossbeam_channel::never()).is_err());
    assert!(!sock.exists(), "the socket is removed again");
    // As a config file has it: the others are served.
    let mut config = config_of(&s);
    config.serve_what_opens = true;
    config.export.insert(
        0,
        ExportSpec {
            name: "gone".into(),
            device: s.dir.path().join("no-such-disk").display().to_string(),
            ..Default::default()
        },
    );
    let host = serving(Host::start(config, &crossbeam_channel::never()));
    let names: Vec<&str> = host.exports().map(|e| e.name()).collect();
    assert_eq!(names, ["disk"]);
    let closed = host.stop().unwrap();
    assert!(matches!(closed[..], [ref c] if matches!(c.outcome, Outcome::Clean)));
}

#[test]
fn a_signal_before_any_export_opens_ends_the_start_with_no_session_begun() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let config = config_of(&s);
    let sock = config.socket.clone().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    tx.send(15).unwrap();
    match Host::start(config, &rx).unwrap() {
        Started::Interrupted(sig) => assert_eq!(sig, 15),
        Started::Serving(_) => panic!("served despite the signal"),
    }
    assert!(!sock.exists(), "the socket is removed again");
    assert!(sessions(&s).is_empty());
}
