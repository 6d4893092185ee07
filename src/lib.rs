//! lostwrite: catch lost writes on block devices.
//!
//! A write-journal sidecar (`serve`) records, for every block written through it, a generation
//! and a checksum in a [`ledger`] kept apart from the device; [`verify`] later holds the device
//! against the ledger and classifies every block that no longer holds its latest durable
//! contents. Data flows server → service → device + ledger on the way in, and verify →
//! classify → report on the way out; each module owns one step. [`findings`] (classification
//! and the findings log) sits below both `verify` and `service`, which share it. [`nbd`] is the
//! protocol alone, under both the server and the NBD device. [`host`] owns a server's whole
//! life, from its configuration to the closing of every export.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod block;
pub mod clock;
pub mod device;
pub mod error;
pub mod findings;
pub mod forensics;
pub mod host;
pub mod ledger;
pub mod locks;
pub mod logsink;
pub mod metrics;
pub mod nbd;
pub mod repair;
pub mod scan;
pub mod server;
pub mod service;
pub mod verify;

pub use error::{Error, Result};
