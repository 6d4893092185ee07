//! A logical volume whose pieces lie apart on its physical volume (linear segments apart, or
//! striped), shown as one linear run of bytes so that debugfs and xfs_db can read its
//! filesystem. Owns the LV's layout (LV offset to device offset and back, through the stripes),
//! a [`BlockDevice`] reading through it, and a minimal read-only NBD server serving it on a
//! unix socket in a private temporary directory, for nbdfuse (and nbdkit's copy-on-write
//! overlay, which takes xfs_db's writes) to show as a file.
//!
//! Why a server of our own: debugfs and xfs_db open files, and nothing on the machine
//! concatenates ranges of a device without device-mapper (which needs root and activates the
//! volume group) or a plugin language; copying the LV costs its whole size. The server speaks
//! the fixed-newstyle handshake (NBD_OPT_GO, INFO, EXPORT_NAME, ABORT; every other option is
//! refused), then READ and DISC; every other command is an error. It serves each connection on
//! its own thread until the export is dropped, which shuts every connection down and joins every
//! thread; the socket's directory goes with it.

use super::fs::{self, Detected, Filesystem};
use super::lvm::{LvSegments, Map, Pv};
use super::partition::Region;
use super::view::FuseView;
use crate::device::{BlockDevice, TrimOutcome};
use crate::nbd::errno;
use crate::nbd::proto::{
    self, cmd, handshake_flags, info_export, opt, read_u32, read_u64, rep, tflags,
    write_option_reply, Request, IHAVEOPT, NBDMAGIC, REQUEST_LEN, SIMPLE_REPLY_LEN,
};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest READ the server answers (libnbd asks for at most 32 MiB).
const MAX_READ: u32 = 32 << 20;
/// Longest option payload the server reads.
const MAX_OPTION: u32 = 64 << 10;

/// A striped segment gathered from its pieces: stripes, chunk bytes, extents per stripe, and
/// each stripe's device offset once found.
type Stripes = (u64, u64, u64, Vec<Option<u64>>);

/// Every accepted connection (a clone, to shut it down) and the thread serving it.
type Connections = Arc<Mutex<Vec<(UnixStream, JoinHandle<()>)>>>;

/// One segment of an LV: `len` bytes from LV byte `lv_start`, laid over `stripes` in chunks of
/// `chunk` bytes (a linear segment is one stripe whose chunk is the whole segment).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    lv_start: u64,
    len: u64,
    chunk: u64,
    /// Each stripe's disk (0: the disk being reported; n: [`Layout::disks`]`[n - 1]`) and the
    /// offset of its first byte on that disk.
    stripes: Vec<(usize, u64)>,
}

/// Where each byte of a logical volume lies on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The LV's length in bytes.
    pub len: u64,
    segs: Vec<Segment>,
    /// The other disks holding some of its extents (paths as given), for disk numbers from 1.
    pub disks: Vec<String>,
}

impl Layout {
    /// The layout of logical volume `lv` from the pieces of PV `pv`, which starts at device
    /// byte `pv_start`; an error says why it cannot be assembled.
    pub fn of(pv: &Pv, lv: &str, pv_start: u64) -> Result<Layout, String> {
        let es = pv.extent_size;
        let dev = |pe: u64| {
            pe.checked_mul(es)
                .and_then(|b| b.checked_add(pv.pe_start))
                .and_then(|b| b.checked_add(pv_start))
                .ok_or_else(|| format!("physical extent {pe} lies beyond any device"))
        };
        let mut segs = Vec::new();
        // Striped segments by their first LV extent: (stripes, chunk, extents per stripe, each
        // stripe's device offset).
        let mut striped: BTreeMap<u64, Stripes> = BTreeMap::new();
        for p in pv.pieces.iter().filter(|p| p.lv == lv) {
            match &p.map {
                Map::Linear { lv_extent } => {
                    let len = p.count.checked_mul(es).ok_or("a segment too long")?;
                    segs.push(Segment {
                        lv_start: lv_extent.checked_mul(es).ok_or("an LV extent too far")?,
                        len,
                        chunk: len,
                        stripes: vec![(0, dev(p.pe)?)],
                    });
                }
                Map::Striped {
                    seg_extent,
                    stripe,
                    stripes,
                    chunk,
                } => {
                    let s = striped.entry(*seg_extent).or_insert_with(|| {
                        (*stripes, *chunk, p.count, vec![None; *stripes as usize])
                    });
                    if (s.0, s.1, s.2) != (*stripes, *chunk, p.count) {
                        return Err(format!(
                            "the stripes of its segment at LV extent {seg_extent} disagree"
                        ));
                    }
                    s.3[*stripe as usize] = Some(dev(p.pe)?);
                }
                Map::Other(kind) => return Err(format!("a {kind} segment")),
            }
        }
        for (seg_extent, (n, chunk, count, at)) in striped {
            let per = count.checked_mul(es).ok_or("a segment too long")?;
            if chunk == 0 || per % chunk != 0 {
                return Err(format!(
                    "its segment at LV extent {seg_extent} has stripes of {per} bytes, not a multiple of its {chunk}-byte chunks"
                ));
            }
            segs.push(Segment {
                lv_start: seg_extent.checked_mul(es).ok_or("an LV extent too far")?,
                len: per.checked_mul(n).ok_or("a segment too long")?,
                chunk,
                stripes: at
                    .into_iter()
                    .map(|d| d.map(|d| (0, d)))
                    .collect::<Option<Vec<(usize, u64)>>>()
                    .ok_or_else(|| {
                        format!(
                            "a stripe of its segment at LV extent {seg_extent} is not on this PV"
                        )
                    })?,
            });
        }
        Layout::joined(segs, Vec::new())
    }

    /// Segments in LV order, checked to leave no gap.
    fn joined(mut segs: Vec<Segment>, disks: Vec<String>) -> Result<Layout, String> {
        segs.sort_by_key(|s| s.lv_start);
        let mut len = 0u64;
        for s in &segs {
            if s.lv_start != len {
                return Err(format!("no segment holds its byte {len}"));
            }
            len = len.checked_add(s.len).ok_or("too long")?;
        }
        if len == 0 {
            return Err("no segment on this PV".into());
        }
        Ok(Layout { len, segs, disks })
    }

    /// The layout of logical volume `lv` (its segments as the VG metadata gives them, extents
    /// of `extent_size` bytes) over several physical volumes: `locate` gives, for a PV name of
    /// the metadata, its disk (0: this one, n: `disks[n - 1]`) and the offset of its first
    /// physical extent there. An error says why it cannot be assembled (a PV not located, a
    /// segment type other than striped).
    pub fn across(
        lv: &LvSegments,
        extent_size: u64,
        locate: &dyn Fn(&str) -> Option<(usize, u64)>,
        disks: Vec<String>,
    ) -> Result<Layout, String> {
        let es = extent_size;
        let mut segs = Vec::new();
        for s in &lv.segs {
            if s.kind != "striped" {
                return Err(format!("a {} segment", s.kind));
            }
            let n = s.areas.len() as u64;
            if n == 0 || s.count % n != 0 {
                return Err(format!(
                    "a striped segment of {} extents over {n} stripes",
                    s.count
                ));
            }
            let per = (s.count / n).checked_mul(es).ok_or("a segment too long")?;
            let chunk = if n == 1 { per } else { s.chunk };
            if chunk == 0 || per % chunk != 0 {
                return Err(format!(
                    "its segment at LV extent {} has stripes of {per} bytes, not a multiple of its {chunk}-byte chunks",
                    s.start
                ));
            }
            let mut stripes = Vec::new();
            for (pv, pe) in &s.areas {
                let (disk, first) =
                    locate(pv).ok_or_else(|| format!("physical volume {pv} is not found"))?;
                let at = pe
                    .checked_mul(es)
                    .and_then(|b| b.checked_add(first))
                    .ok_or_else(|| format!("physical extent {pe} lies beyond any device"))?;
                stripes.push((disk, at));
            }
            segs.push(Segment {
                lv_start: s.start.checked_mul(es).ok_or("an LV extent too far")?,
                len: per.checked_mul(n).ok_or("a segment too long")?,
                chunk,
                stripes,
            });
        }
        Layout::joined(segs, disks)
    }

    /// The disk (0: this one) and offset of LV byte `off`, and how many bytes from there are
    /// contiguous on that disk.
    pub fn to_device(&self, off: u64) -> Option<(usize, u64, u64)> {
        let s = self
            .segs
            .iter()
            .find(|s| off >= s.lv_start && off - s.lv_start < s.len)?;
        let rel = off - s.lv_start;
        let n = s.stripes.len() as u64;
        let (k, within) = (rel / s.chunk, rel % s.chunk);
        let (disk, first) = s.stripes[(k % n) as usize];
        let dev = first
            .saturating_add((k / n) * s.chunk)
            .saturating_add(within);
        Some((disk, dev, s.chunk - within))
    }

    /// The LV byte that byte `dev` of this disk holds, if it holds one.
    pub fn to_lv(&self, dev: u64) -> Option<u64> {
        for s in &self.segs {
            let n = s.stripes.len() as u64;
            let per = s.len / n;
            for (j, &(disk, d)) in s.stripes.iter().enumerate() {
                if disk == 0 && dev >= d && dev - d < per {
                    let r = dev - d;
                    let chunks = (r / s.chunk) * n + j as u64;
                    return Some(s.lv_start + chunks * s.chunk + r % s.chunk);
                }
            }
        }
        None
    }

    /// The bytes of this disk the LV covers: (lowest, highest + 1).
    pub fn device_span(&self) -> (u64, u64) {
        let here = |s: &Segment| {
            let per = s.len / s.stripes.len() as u64;
            s.stripes
                .iter()
                .filter(|d| d.0 == 0)
                .map(move |d| (d.1, d.1.saturating_add(per)))
                .collect::<Vec<_>>()
        };
        let lo = self.segs.iter().flat_map(here).map(|d| d.0);
        let hi = self.segs.iter().flat_map(here).map(|d| d.1);
        (lo.min().unwrap_or(0), hi.max().unwrap_or(0))
    }
}

/// A logical volume's bytes, read through its layout from the device.
pub struct LvBytes {
    name: String,
    /// This disk, then [`Layout::disks`] in order.
    devs: Vec<Box<dyn BlockDevice>>,
    layout: Layout,
}

impl LvBytes {
    /// The LV `name` laid out as `layout` on `devs` (this disk, then the layout's other disks).
    pub fn new(name: String, devs: Vec<Box<dyn BlockDevice>>, layout: Layout) -> LvBytes {
        LvBytes { name, devs, layout }
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "an assembled logical volume is read-only",
    )
}

impl BlockDevice for LvBytes {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.layout.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (disk, dev, run) = self.layout.to_device(at).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("byte {at} lies beyond logical volume {}", self.name),
                )
            })?;
            let take = (buf.len() - done).min(usize::try_from(run).unwrap_or(usize::MAX));
            let d = self.devs.get(disk).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no disk {disk}"))
            })?;
            d.read_at(&mut buf[done..done + take], dev)?;
            done += take;
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn trim_zeroes(&self) -> bool {
        false
    }
    fn trim(&self, _: u64, _: u64) -> io::Result<TrimOutcome> {
        Err(read_only())
    }
}

/// A logical volume assembled from its layout, with what reads its filesystem: the export and
/// the file view of it, kept until the owners are known (the view is dropped first).
pub struct Assembled {
    /// Where its bytes lie.
    pub layout: Layout,
    view: Option<Result<FuseView, String>>,
    export: Option<Export>,
}

impl Assembled {
    /// An LV laid out as `layout`, not yet read.
    pub fn new(layout: Layout) -> Assembled {
        Assembled {
            layout,
            view: None,
            export: None,
        }
    }

    /// Detects and opens the filesystem of the LV (region `r`, its bytes on the device at
    /// `device_path`), serving it for debugfs or xfs_db when it is one lostwrite reads.
    pub fn open_fs(
        &mut self,
        device_path: &str,
        r: &Region,
        notes: &mut Vec<String>,
    ) -> (Option<Detected>, Option<Result<Filesystem, String>>) {
        let mut devs: Vec<Box<dyn BlockDevice>> = Vec::new();
        for path in std::iter::once(device_path).chain(self.layout.disks.iter().map(|d| d.as_str()))
        {
            match crate::device::open(path, false) {
                Ok(d) => devs.push(Box::new(d)),
                Err(e) => {
                    notes.push(format!(
                        "{}: opening {path} to read the logical volume through its layout: {e}; its findings are not mapped to files",
                        r.name
                    ));
                    return (None, None);
                }
            }
        }
        let lv = Arc::new(LvBytes::new(r.name.clone(), devs, self.layout.clone()));
        let whole = Region {
            name: r.name.clone(),
            start: 0,
            len: self.layout.len,
        };
        let detected = fs::detect(&*lv, &whole);
        let opened = match &detected {
            Some(kind @ (Detected::Ext(_) | Detected::Xfs)) => match Export::start(Arc::clone(&lv))
            {
                Err(e) => Some(Err(e)),
                Ok(x) => {
                    let uri = x.uri().to_string();
                    self.export = Some(x);
                    let (view, len) = (&mut self.view, self.layout.len);
                    let mut local = || {
                        view.get_or_insert_with(|| FuseView::open(&uri, len))
                            .as_ref()
                            .map(|v| v.path().display().to_string())
                            .map_err(|e| e.clone())
                    };
                    Filesystem::open(kind, &*lv, &whole, &uri, &mut local)
                }
            },
            _ => None,
        };
        (detected, opened)
    }
}

impl Drop for Assembled {
    fn drop(&mut self) {
        // nbdfuse first, while the export still answers it.
        self.view.take();
        self.export.take();
    }
}

/// A read-only NBD export of an [`LvBytes`] on a private unix socket, served until dropped.
pub struct Export {
    uri: String,
    stop: Arc<AtomicBool>,
    /// Every accepted connection (a clone, to shut it down) and its thread.
    conns: Connections,
    accept: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Export {
    /// Serves `lv` on a new socket.
    pub fn start(lv: Arc<LvBytes>) -> Result<Export, String> {
        let dir = tempfile::Builder::new()
            .prefix("lostwrite-lv")
            .tempdir()
            .map_err(|e| format!("making a directory for the logical volume's socket: {e}"))?;
        let sock = dir.path().join("sock");
        let listener = UnixListener::bind(&sock)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|e| format!("listening on {}: {e}", sock.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = std::thread::spawn(move || accept_loop(listener, lv, s, c));
        Ok(Export {
            uri: format!("nbd+unix:///?socket={}", sock.display()),
            stop,
            conns,
            accept: Some(accept),
            _dir: dir,
        })
    }

    /// The export's NBD URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, t) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stop`, each served on its own thread.
fn accept_loop(
    listener: UnixListener,
    lv: Arc<LvBytes>,
    stop: Arc<AtomicBool>,
    conns: Connections,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let Ok(kept) = s.set_nonblocking(false).and_then(|_| s.try_clone()) else {
                    continue;
                };
                let lv = Arc::clone(&lv);
                let t = std::thread::spawn(move || {
                    let _ = serve(s, &lv);
                });
                conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((kept, t));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves one connection: the handshake, then READ until DISC or the connection ends.
fn serve(mut s: UnixStream, lv: &LvBytes) -> io::Result<()> {
    let size = lv.size();
    let flags = tflags::HAS_FLAGS | tflags::READ_ONLY;
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(
        &(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES).to_be_bytes(),
    );
    s.write_all(&greeting)?;
    let client = read_u32(&mut s)?;
    let known = proto::client_flags::FIXED_NEWSTYLE | proto::client_flags::NO_ZEROES;
    if client & !known != 0 {
        return Ok(());
    }
    loop {
        if read_u64(&mut s)? != IHAVEOPT {
            return Ok(());
        }
        let (option, len) = (read_u32(&mut s)?, read_u32(&mut s)?);
        if len > MAX_OPTION {
            return Ok(());
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            opt::EXPORT_NAME => {
                let mut b = size.to_be_bytes().to_vec();
                b.extend_from_slice(&flags.to_be_bytes());
                if client & proto::client_flags::NO_ZEROES == 0 {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b)?;
                break;
            }
            opt::GO | opt::INFO => {
                write_option_reply(&mut s, option, rep::INFO, &info_export(size, flags))?;
                write_option_reply(&mut s, option, rep::ACK, &[])?;
                if option == opt::GO {
                    break;
                }
            }
            opt::ABORT => {
                write_option_reply(&mut s, option, rep::ACK, &[])?;
                return Ok(());
            }
            _ => write_option_reply(&mut s, option, rep::ERR_UNSUP, &[])?,
        }
    }
    let mut head = [0u8; REQUEST_LEN];
    loop {
        s.read_exact(&mut head)?;
        let Ok(r) = Request::parse(&head) else {
            return Ok(());
        };
        let mut reply = [0u8; SIMPLE_REPLY_LEN];
        match r.kind {
            cmd::READ => {
                let fits = r.length <= MAX_READ
                    && r.offset
                        .checked_add(r.length as u64)
                        .is_some_and(|e| e <= size);
                if !fits {
                    proto::simple_reply(&mut reply, errno::EINVAL, r.cookie);
                    s.write_all(&reply)?;
                    continue;
                }
                let mut out = vec![0u8; SIMPLE_REPLY_LEN + r.length as usize];
                let error = match lv.read_at(&mut out[SIMPLE_REPLY_LEN..], r.offset) {
                    Ok(()) => 0,
                    Err(_) => errno::EIO,
                };
                proto::simple_reply(&mut out, error, r.cookie);
                let n = if error == 0 {
                    out.len()
                } else {
                    SIMPLE_REPLY_LEN
                };
                s.write_all(&out[..n])?;
            }
            cmd::DISC => return Ok(()),
            cmd::WRITE => {
                // A client that writes anyway: its payload is read and refused.
                if r.length > MAX_READ {
                    return Ok(());
                }
                io::copy(&mut (&mut s).take(r.length as u64), &mut io::sink())?;
                proto::simple_reply(&mut reply, errno::EPERM, r.cookie);
                s.write_all(&reply)?;
            }
            _ => {
                proto::simple_reply(&mut reply, errno::EINVAL, r.cookie);
                s.write_all(&reply)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forensics::lvm::Piece;

    fn pv(pieces: Vec<Piece>) -> Pv {
        Pv {
            vg: "vg".into(),
            seqno: 1,
            pe_start: 1 << 20,
            extent_size: 4 << 20,
            pe_count: 20,
            pv_count: 1,
            pieces,
            contiguous: Vec::new(),
            whole: Vec::new(),
            metadata: Vec::new(),
            uuid: String::new(),
            vg_pvs: Vec::new(),
            lvs: Vec::new(),
        }
    }

    #[test]
    fn linear_pieces_apart_and_stripes_map_both_ways() {
        let mib = 1u64 << 20;
        let piece = |pe, count, map| Piece {
            lv: "lv".into(),
            pe,
            count,
            map,
        };
        let st = |stripe| Map::Striped {
            seg_extent: 2,
            stripe,
            stripes: 2,
            chunk: 64 << 10,
        };
        let p = pv(vec![
            piece(0, 1, Map::Linear { lv_extent: 0 }),
            piece(3, 1, Map::Linear { lv_extent: 1 }),
            piece(6, 2, st(0)),
            piece(10, 2, st(1)),
        ]);
        let l = Layout::of(&p, "lv", 10 * mib).unwrap();
        assert_eq!(l.len, 24 * mib);
        let base = 11 * mib;
        // LV extent 1 is PE 3.
        assert_eq!(
            l.to_device(4 * mib + 5),
            Some((0, base + 12 * mib + 5, 4 * mib - 5))
        );
        // The striped segment starts at LV byte 8 MiB: its second chunk is stripe 1's first.
        let c = 64 << 10;
        assert_eq!(
            l.to_device(8 * mib + c + 7),
            Some((0, base + 40 * mib + 7, c - 7))
        );
        assert_eq!(
            l.to_device(8 * mib + 2 * c),
            Some((0, base + 24 * mib + c, c))
        );
        for off in [
            0,
            5,
            4 * mib + 5,
            8 * mib + c + 7,
            8 * mib + 3 * c + 9,
            24 * mib - 1,
        ] {
            let (_, d, _) = l.to_device(off).unwrap();
            assert_eq!(l.to_lv(d), Some(off), "LV byte {off}");
        }
        assert_eq!(l.to_device(24 * mib), None);
        assert_eq!(l.to_lv(base + 4 * mib), None, "PE 1 is not this LV's");
        assert_eq!(l.device_span(), (base, base + 48 * mib));
        // A missing stripe, or a gap, is said.
        let gap = pv(vec![piece(0, 1, Map::Linear { lv_extent: 1 })]);
        assert!(Layout::of(&gap, "lv", 0).unwrap_err().contains("byte 0"));
        let half = pv(vec![piece(6, 2, st(0))]);
        assert!(Layout::of(&half, "lv", 0).is_err());
    }

    #[test]
    fn an_lv_across_two_disks_maps_each_stripe_to_its_disk() {
        use crate::forensics::lvm::Seg;
        let mib = 1u64 << 20;
        let seg = |start, count, areas: &[(&str, u64)]| Seg {
            start,
            count,
            kind: "striped".into(),
            chunk: if areas.len() > 1 { 64 << 10 } else { 0 },
            areas: areas.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
        };
        let lv = LvSegments {
            name: "lv".into(),
            segs: vec![
                seg(0, 1, &[("pv0", 2)]),
                seg(1, 2, &[("pv0", 5), ("pv1", 0)]),
            ],
        };
        let locate = |n: &str| match n {
            "pv0" => Some((0, mib)),
            "pv1" => Some((1, 3 * mib)),
            _ => None,
        };
        let l = Layout::across(&lv, 4 * mib, &locate, vec!["b.img".into()]).unwrap();
        assert_eq!(l.len, 12 * mib);
        assert_eq!(l.to_device(5), Some((0, 9 * mib + 5, 4 * mib - 5)));
        // The striped segment's second chunk is pv1's first, on the other disk.
        let c = 64 << 10;
        assert_eq!(l.to_device(4 * mib + c + 1), Some((1, 3 * mib + 1, c - 1)));
        assert_eq!(l.to_lv(21 * mib + 3), Some(4 * mib + 3));
        assert_eq!(
            l.to_lv(3 * mib + 1),
            None,
            "that byte of this disk is no LV's"
        );
        let nowhere = |_: &str| None;
        assert!(Layout::across(&lv, 4 * mib, &nowhere, Vec::new())
            .unwrap_err()
            .contains("pv0"));
        let huge = LvSegments {
            name: "lv".into(),
            segs: vec![seg(u64::MAX, u64::MAX, &[("pv0", u64::MAX)])],
        };
        assert!(Layout::across(&huge, 4 * mib, &locate, Vec::new()).is_err());
    }
}
