//! The integration suite: one binary, a module per topic. Library-level tests drive the ledger
//! API; CLI tests run the built `lostwrite` binary the way an operator would.

mod classify;
mod cli;
mod helpers;
mod journal;
