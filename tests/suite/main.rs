//! The integration suite: one binary, a module per topic. Library-level tests drive the ledger
//! API; CLI tests run the built `lostwrite` binary the way an operator would; interop tests
//! drive `lostwrite serve` with real NBD clients and a real filesystem.

mod cache_none;
mod classify;
mod cli;
mod crash;
mod detect;
mod durability;
mod ext4;
mod fleet;
mod flush_overlap;
mod forensics;
mod forensics_fleet;
mod forensics_free;
mod forensics_gpt;
mod forensics_lvm;
mod forensics_lvm_apart;
mod forensics_lvm_pvs;
mod forensics_packages;
mod forensics_xfs;
mod helpers;
mod history_index;
mod history_skim;
mod host;
mod hostile;
mod interop;
mod journal;
mod keep_data;
mod layering;
mod nbd_client;
mod operations;
mod powercut;
mod protocol;
mod reload;
mod reopen;
mod repair;
mod retention;
mod serve_idle;
mod service;
mod tls;
mod trust_cli;
mod trust_ledger;
mod trust_media;
mod trust_serve;
mod upstream;
