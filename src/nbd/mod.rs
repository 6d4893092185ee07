//! NBD, written for this project: the wire format ([`proto`]), the server side of the
//! handshake ([`handshake`]), and the server ([`server`]): listeners, one thread per connection
//! reading requests, a shared pool of workers executing them against the
//! [`crate::service::Export`], replies written out of order as they complete. Beside it: the
//! client ([`client`]) for NBD upstreams, URIs ([`uri`]), sockets ([`stream`]), TLS ([`tls`])
//! and reusable request buffers ([`buffers`]).

pub mod buffers;
pub mod client;
pub mod handshake;
pub mod proto;
pub mod server;
pub mod stream;
pub mod tls;
pub mod uri;
