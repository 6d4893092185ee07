//! The background scrubber (`serve --scrub-rate MIB_PER_S --scrub-interval DURATION`): walks the
//! device in block order at a set rate, reading the media rather than the page cache
//! ([`crate::device::BlockDevice::read_media`]), and holds every tracked block against the
//! state table. A block with a change in flight, or changed while it was read, is skipped, so
//! a concurrent write never becomes a false finding; a stale block goes to the detector and is
//! classified as `verify` would. Where a pass stands is saved in the ledger directory
//! (`scrub.json`) every few seconds, so a restarted service resumes there.

use super::detect::Suspect;
use super::Export;
use crate::block;
use crate::clock::Micros;
use crate::findings::classify::Found;
use crate::findings::Source;
use crate::ledger::state::BlockState;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// File in the ledger directory holding where the scrub stands.
pub const SCRUB_FILE: &str = "scrub.json";

/// How often the position is saved.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// How to scrub.
#[derive(Clone, Copy, Debug)]
pub struct ScrubOptions {
    /// Bytes per second to read.
    pub rate: u64,
    /// Time from the start of one pass to the start of the next (a pass that takes longer is
    /// followed at once by the next).
    pub interval: Duration,
}

/// Where a scrub stands, as saved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ScrubState {
    /// Passes completed.
    pub passes: u64,
    /// The next block the current pass reads.
    pub next_block: u64,
    /// When the current pass began (RFC 3339 in the file), if one is under way.
    #[serde(default, with = "crate::clock::as_rfc3339_opt")]
    pub pass_started: Option<Micros>,
    /// When the last pass ended (RFC 3339 in the file).
    #[serde(default, with = "crate::clock::as_rfc3339_opt")]
    pub last_pass_ended: Option<Micros>,
}

impl ScrubState {
    /// Reads the saved state of the ledger in `dir` (the default when there is none or it is
    /// unreadable: the scrub then starts from the beginning, which is always safe).
    pub fn load(dir: &Path) -> ScrubState {
        std::fs::read(dir.join(SCRUB_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) {
        let tmp = dir.join(format!("{SCRUB_FILE}.tmp"));
        let r = std::fs::write(&tmp, serde_json::to_vec(self).expect("serialises"))
            .and_then(|()| std::fs::rename(&tmp, dir.join(SCRUB_FILE)));
        if let Err(e) = r {
            tracing::warn!(
                "{}: saving the scrub position: {e} (a restart would scrub from an older point)",
                dir.display()
            );
        }
    }
}

/// The scrubber thread of one export.
pub struct Scrubber {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Scrubber {
    /// Starts scrubbing `export` (which must be recording).
    pub fn start(export: &Arc<Export>, opts: ScrubOptions) -> crate::Result<Scrubber> {
        let dir = export
            .ledger()
            .ok_or_else(|| {
                crate::Error::Usage("scrubbing needs a ledger (not --no-record)".into())
            })?
            .dir()
            .to_path_buf();
        if opts.rate == 0 {
            return Err(crate::Error::Usage(
                "--scrub-rate must be above 0 MiB/s".into(),
            ));
        }
        let (stop, stopped) = bounded(1);
        let weak = Arc::downgrade(export);
        let handle = std::thread::Builder::new()
            .name(format!("scrub {}", export.name()))
            .spawn(move || run(weak, dir, opts, stopped))
            .map_err(|e| crate::Error::io("scrubber", "starting the thread", e))?;
        Ok(Scrubber {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops after the chunk in hand, saving where it stands.
    pub fn stop(mut self) {
        let _ = self.stop.try_send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.try_send(());
            let _ = h.join();
        }
    }
}

/// Sleeps for `d` unless told to stop; true when told.
fn pause(stopped: &Receiver<()>, d: Duration) -> bool {
    !matches!(stopped.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

fn run(export: Weak<Export>, dir: PathBuf, opts: ScrubOptions, stopped: Receiver<()>) {
    let mut st = ScrubState::load(&dir);
    let Some((geo, name)) = export
        .upgrade()
        .map(|e| (e.geo, e.log_name().map(str::to_string)))
    else {
        return;
    };
    let bs = geo.block_size as u64;
    // About twenty reads a second, whole blocks, at most 1 MiB each.
    let chunk_blocks = (opts.rate / 20 / bs).clamp(1, ((1 << 20) / bs).max(1));
    let blocks = geo.block_count();
    if st.next_block >= blocks {
        st.next_block = 0;
        st.pass_started = None;
    }
    if st.next_block > 0 {
        tracing::info!(
            export = name.as_deref(),
            "scrub resumes pass {} at block {}",
            st.passes + 1,
            st.next_block
        );
    }
    let mut buf = vec![0u8; (chunk_blocks * bs) as usize];
    loop {
        let pass_start = Instant::now();
        if st.pass_started.is_none() {
            st.pass_started = Some(crate::clock::now());
        }
        let (mut read_bytes, mut checked, mut skipped, mut stale) = (0u64, 0u64, 0u64, 0u64);
        let mut saved = Instant::now();
        while st.next_block < blocks {
            let Some(e) = export.upgrade() else { return };
            let first = st.next_block;
            let n = chunk_blocks.min(blocks - first);
            let offset = geo.offset(first);
            let len = (geo.device_size - offset).min(n * bs) as usize;
            match scrub_chunk(&e, first, n, &mut buf[..len]) {
                Ok(c) => {
                    checked += c.checked;
                    skipped += c.skipped;
                    stale += c.stale;
                }
                Err(err) => tracing::error!(
                    export = name.as_deref(),
                    "scrub: reading {len} bytes at offset {offset} (block {first}): {err}; going on"
                ),
            }
            read_bytes += len as u64;
            st.next_block = first + n;
            e.counters.scrub_blocks.fetch_add(n, Ordering::Relaxed);
            e.counters
                .scrub_position
                .store(st.next_block, Ordering::Relaxed);
            drop(e);
            if saved.elapsed() >= SAVE_EVERY {
                st.save(&dir);
                saved = Instant::now();
            }
            // The rate: never ahead of rate × time since the pass (re)started.
            let due = Duration::from_secs_f64(read_bytes as f64 / opts.rate as f64);
            let ahead = due.saturating_sub(pass_start.elapsed());
            if pause(&stopped, ahead) {
                st.save(&dir);
                return;
            }
        }
        let took = pass_start.elapsed();
        st.passes += 1;
        st.next_block = 0;
        st.pass_started = None;
        st.last_pass_ended = Some(crate::clock::now());
        st.save(&dir);
        if let Some(e) = export.upgrade() {
            e.counters.scrub_passes.fetch_add(1, Ordering::Relaxed);
            e.counters.scrub_position.store(0, Ordering::Relaxed);
        }
        tracing::info!(
            export = name.as_deref(),
            "scrub pass {} done: {} MiB in {:.1} s ({:.2} MiB/s, set {:.2}); {checked} blocks checked, {skipped} skipped (changing), {stale} stale",
            st.passes,
            read_bytes >> 20,
            took.as_secs_f64(),
            read_bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-9),
            opts.rate as f64 / (1 << 20) as f64,
        );
        if pause(&stopped, opts.interval.saturating_sub(took)) {
            return;
        }
    }
}

struct ChunkResult {
    checked: u64,
    skipped: u64,
    stale: u64,
}

fn scrub_chunk(e: &Export, first: u64, n: u64, buf: &mut [u8]) -> std::io::Result<ChunkResult> {
    let mut r = ChunkResult {
        checked: 0,
        skipped: 0,
        stale: 0,
    };
    let Some(l) = e.ledger() else { return Ok(r) };
    let range = first..first + n;
    // As on the read path: states taken before the read, with no change in flight; any block
    // changed during the read is skipped (the next pass gets it).
    // The state first, then whether a change is in flight: a change records its new state
    // while holding its lock, so a state read before an idle lock was on the device already.
    let before: Vec<BlockState> = range.clone().map(|b| l.state(b)).collect();
    let busy: Vec<bool> = range.map(|b| e.locks.busy(&(b..b + 1))).collect();
    e.device.read_media(buf, e.geo.offset(first))?;
    let bs = e.geo.block_size as usize;
    for (i, expected) in before.into_iter().enumerate() {
        let b = first + i as u64;
        let BlockState::Tracked { crc, .. } = expected else {
            continue;
        };
        if busy[i] || l.state(b) != expected || e.locks.busy(&(b..b + 1)) {
            r.skipped += 1;
            continue;
        }
        let start = i * bs;
        let data = &buf[start..(start + e.geo.bytes_in(b)).min(buf.len())];
        let found = block::checksum_padded(data, bs as u32);
        r.checked += 1;
        if found == crc {
            e.passed(b, Source::Scrub);
            continue;
        }
        r.stale += 1;
        e.suspect(Suspect {
            block: b,
            expected,
            found: Found::of(found, data, l.zero_crc()),
            source: Source::Scrub,
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::ScrubState;

    #[test]
    fn a_saved_position_reads_back_as_the_same_bytes() {
        for text in [
            r#"{"passes":3,"next_block":77,"pass_started":"2026-11-25T14:03:11.123456Z","last_pass_ended":"2026-11-25T13:00:00.000001Z"}"#,
            r#"{"passes":0,"next_block":0,"pass_started":null,"last_pass_ended":null}"#,
        ] {
            let st: ScrubState = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&st).unwrap(), text);
        }
        let st: ScrubState = serde_json::from_str(
            r#"{"passes":1,"next_block":5,"pass_started":"2026-11-25T14:03:11.5Z","last_pass_ended":null}"#,
        )
        .unwrap();
        assert_eq!(st.pass_started.map(|t| t % 1_000_000), Some(500_000));
    }
}
