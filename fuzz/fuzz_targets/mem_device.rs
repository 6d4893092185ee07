// An in-memory device for fuzz targets (included, not a module of its own).
use lostwrite::device::{BlockDevice, TrimOutcome};
use std::io;
use std::sync::Mutex;

pub struct Mem(Mutex<Vec<u8>>);

impl Mem {
    pub fn new(size: usize) -> Mem {
        Mem(Mutex::new(vec![0u8; size]))
    }
}

fn range(len: usize, off: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(off).map_err(|_| io::Error::other("offset"))?;
    match start.checked_add(n) {
        Some(end) if end <= len => Ok(start..end),
        _ => Err(io::Error::other("beyond the end")),
    }
}

impl BlockDevice for Mem {
    fn name(&self) -> &str {
        "mem"
    }
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let d = self.0.lock().unwrap();
        let r = range(d.len(), off, buf.len())?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64, _: bool) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        let r = range(d.len(), off, buf.len())?;
        d[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, off: u64, len: u64, _: bool, _: bool) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        let r = range(d.len(), off, len as usize)?;
        d[r].fill(0);
        Ok(())
    }
    fn trim_zeroes(&self) -> bool {
        true
    }
    fn trim(&self, off: u64, len: u64) -> io::Result<TrimOutcome> {
        self.write_zeroes(off, len, true, false)?;
        Ok(TrimOutcome::Zeroed)
    }
}
