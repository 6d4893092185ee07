//! The NBD protocol, written for this project, and nothing above it: the wire format
//! ([`proto`]), the protocol's error values and the one mapping between them and host I/O
//! errors ([`errno`]), the client for NBD upstreams ([`client`]), `nbd://` and `nbd+unix://` URIs
//! ([`uri`]), and plain sockets ([`stream`]).
//!
//! This is the bottom layer: it imports nothing from the rest of the crate (not even
//! `crate::error`: its errors are `io::Error`s, which every caller already speaks), so the
//! device layer can stand on the client and the server (`crate::server`) on the wire format
//! without either pulling the other in. A test (tests/suite/layering.rs) keeps it so.

pub mod client;
pub mod errno;
pub mod proto;
pub mod stream;
pub mod uri;
