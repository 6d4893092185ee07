//! A small hand-made NBD client for protocol edge cases, built on the crate's own wire module
//! (the same constants a real client sends).

#![allow(dead_code)]

use lostwrite::nbd::proto::{self, opt, Request};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Client {
    pub s: UnixStream,
    pub size: u64,
    pub flags: u16,
}

/// Reads the greeting and answers with fixed-newstyle + no-zeroes.
pub fn greet(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[0..8], &proto::NBDMAGIC.to_be_bytes());
    assert_eq!(&g[8..16], &proto::IHAVEOPT.to_be_bytes());
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

/// The same over TCP.
pub fn greet_tcp(addr: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[0..8], &proto::NBDMAGIC.to_be_bytes());
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

pub fn send_option(s: &mut impl Write, option: u32, data: &[u8]) {
    let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// Reads one option reply: (option, type, data).
pub fn option_reply(s: &mut impl Read) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[0..8], &proto::OPT_REPLY_MAGIC.to_be_bytes());
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (option, kind, d)
}

pub fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

impl Client {
    /// Connects with NBD_OPT_GO for `name`.
    pub fn connect(path: &Path, name: &str) -> Client {
        let mut s = greet(path);
        send_option(&mut s, opt::GO, &go_data(name, &[proto::info::BLOCK_SIZE]));
        Self::finish_go(s)
    }

    /// Reads the replies to a GO already sent.
    pub fn finish_go(mut s: UnixStream) -> Client {
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, kind, d) = option_reply(&mut s);
            match kind {
                proto::rep::INFO => {
                    if u16::from_be_bytes([d[0], d[1]]) == proto::info::EXPORT {
                        size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                        flags = u16::from_be_bytes([d[10], d[11]]);
                    }
                }
                proto::rep::ACK => break,
                other => panic!("GO failed with reply {other:#x}"),
            }
        }
        Client { s, size, flags }
    }

    pub fn send(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let r = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        let mut b = r.encode().to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// Reads a reply header: (error, cookie).
    pub fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        proto::parse_simple_reply(&h).expect("simple reply magic")
    }

    /// A request and its reply; returns the error and the data read.
    pub fn call(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        self.send(kind, flags, 7, offset, length, payload);
        let (err, cookie) = self.reply();
        assert_eq!(cookie, 7);
        let mut data = Vec::new();
        if kind == proto::cmd::READ && err == 0 {
            data.resize(length as usize, 0);
            self.s.read_exact(&mut data).unwrap();
        }
        (err, data)
    }

    pub fn read(&mut self, offset: u64, length: u32) -> Vec<u8> {
        let (e, d) = self.call(proto::cmd::READ, 0, offset, length, &[]);
        assert_eq!(e, 0, "read at {offset} failed");
        d
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let (e, _) = self.call(proto::cmd::WRITE, 0, offset, data.len() as u32, data);
        assert_eq!(e, 0, "write at {offset} failed");
    }
}
