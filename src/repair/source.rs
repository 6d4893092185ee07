//! Where the lost bytes may be found: a [`Source`] answers, for a run of blocks, what it holds
//! for each ([`Lookup`]). The planner, not the source, decides whether the bytes are the lost
//! generation (their checksum must equal the expected one), so a source can never get a wrong
//! block written. [`DeviceSource`] is another copy of the disk opened read-only: an image file,
//! a block device or an NBD export (a backup, a snapshot, a replica); a store of kept block
//! contents implements the same trait and is asked first.

use crate::block::Geometry;
use crate::device::{AlignedBuf, BlockDevice, Device, MediaRead, DIRECT_ALIGN};
use crate::ledger::kept::KeptData;
use crate::ledger::record::Generation;
use std::path::Path;

/// A block whose expected generation is sought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// Block number (in the ledger's block size).
    pub block: u64,
    /// The generation the ledger expects there.
    pub generation: Generation,
    /// Its checksum (of the block padded with zeroes, for a partial last block).
    pub crc: u32,
}

/// What a source holds for one wanted block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// These bytes (the block's length; shorter for a partial last block): the planner checks
    /// their checksum.
    Bytes(Vec<u8>),
    /// Nothing usable, and why ("the image ends at byte N", "read failed: ...", "not kept").
    Missing(String),
}

/// A place that may hold lost generations.
pub trait Source: Sync {
    /// What it is, for the plan ("backup.img", an NBD URI, "kept data").
    fn label(&self) -> String;
    /// How it was read, when that applies (a device: direct, cache-dropped, cached, nbd).
    fn media_read(&self) -> Option<MediaRead> {
        None
    }
    /// A note on the source as a whole (its size differs from the device's), if any.
    fn note(&self, _geo: Geometry) -> Option<String> {
        None
    }
    /// What it holds for each of `wants` (in the same order). The wants come in block order;
    /// consecutive blocks may be read at once.
    fn lookup(&self, geo: Geometry, wants: &[Want]) -> Vec<Lookup>;
}

/// Most bytes read from a source at once.
const MAX_READ: u64 = 1 << 20;

/// Another copy of the device, read at the same offsets: a file, block device or NBD export,
/// opened read-only and read with O_DIRECT where it allows (as `verify` reads).
pub struct DeviceSource {
    dev: Device,
    spec: String,
}

impl DeviceSource {
    /// Opens `spec` (a path or an NBD URI) read-only.
    pub fn open(spec: &str) -> crate::Result<DeviceSource> {
        let dev = crate::device::open(spec, false).map_err(|e| match e {
            crate::Error::Usage(m) => crate::Error::Usage(format!("--from {spec}: {m}")),
            other => other,
        })?;
        Ok(DeviceSource {
            dev,
            spec: spec.to_string(),
        })
    }

    /// Reads blocks `first..first + count` (all within the source) into `out`, one entry each.
    fn read_run(&self, geo: Geometry, first: u64, count: u64, out: &mut Vec<Lookup>) {
        let off = geo.offset(first);
        let last = first + count - 1;
        let len = (geo.offset(last) + geo.bytes_in(last) as u64 - off) as usize;
        let mut buf = AlignedBuf::new(len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN);
        let data = &mut buf.as_mut_slice()[..len];
        match self.dev.read_media(data, off) {
            Ok(()) => {
                for b in first..=last {
                    let at = (geo.offset(b) - off) as usize;
                    out.push(Lookup::Bytes(data[at..at + geo.bytes_in(b)].to_vec()));
                }
            }
            Err(e) => {
                let why = format!("read failed at offset {off}: {e}");
                out.extend((0..count).map(|_| Lookup::Missing(why.clone())));
            }
        }
    }
}

impl Source for DeviceSource {
    fn label(&self) -> String {
        self.spec.clone()
    }

    fn media_read(&self) -> Option<MediaRead> {
        Some(self.dev.media_read())
    }

    fn note(&self, geo: Geometry) -> Option<String> {
        let (mine, theirs) = (self.dev.size(), geo.device_size);
        (mine != theirs).then(|| {
            format!(
                "{} is {mine} bytes and the device {theirs}: blocks are read at the device's offsets, so it must be a copy of the whole device",
                self.spec
            )
        })
    }

    fn lookup(&self, geo: Geometry, wants: &[Want]) -> Vec<Lookup> {
        let size = self.dev.size();
        let per_read = (MAX_READ / geo.block_size as u64).max(1);
        let mut out = Vec::with_capacity(wants.len());
        let mut i = 0;
        while i < wants.len() {
            let first = wants[i].block;
            let end = geo.offset(first) + geo.bytes_in(first) as u64;
            if end > size {
                out.push(Lookup::Missing(format!(
                    "it ends at byte {size}, before this block's end at {end}"
                )));
                i += 1;
                continue;
            }
            // A run of consecutive blocks wholly inside the source, read at once.
            let mut n = 1;
            while i + n < wants.len()
                && (n as u64) < per_read
                && wants[i + n].block == first + n as u64
                && geo.offset(first + n as u64) + geo.bytes_in(first + n as u64) as u64 <= size
            {
                n += 1;
            }
            self.read_run(geo, first, n as u64, &mut out);
            i += n;
        }
        out
    }
}

/// The contents `serve --keep-data` kept beside the ledger: asked first, since it holds exactly
/// what the client wrote. An entry is returned only when its hash verifies and it holds the
/// wanted generation with the wanted checksum; the planner still checks the checksum.
pub struct KeptSource {
    kept: KeptData,
}

impl KeptSource {
    /// The data log of the ledger in `ledger_dir`, or `None` when it has none.
    pub fn open(ledger_dir: &Path) -> crate::Result<Option<KeptSource>> {
        Ok(KeptData::open(ledger_dir)?.map(|kept| KeptSource { kept }))
    }
}

impl Source for KeptSource {
    fn label(&self) -> String {
        format!("kept data ({})", self.kept.dir().display())
    }

    fn lookup(&self, geo: Geometry, wants: &[Want]) -> Vec<Lookup> {
        wants
            .iter()
            .map(|w| match self.kept.find(w.block, w.generation, w.crc) {
                Ok(Some(mut data)) => {
                    // A partial last block is kept padded to the block size.
                    data.truncate(geo.bytes_in(w.block));
                    Lookup::Bytes(data)
                }
                Ok(None) => Lookup::Missing(format!(
                    "generation {} is not kept (written before the window, or never kept)",
                    w.generation
                )),
                Err(e) => Lookup::Missing(format!("read failed: {e}")),
            })
            .collect()
    }
}
