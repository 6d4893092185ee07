//! Process crashes under load: writers keep writing through `serve` with a FLUSH every few
//! writes, the service is killed with SIGKILL at a random moment, restarted, and so on. After
//! every crash each block must hold what its last completed FLUSH made durable or something
//! written after it; at the end a clean session, `verify` exits 0 and `ledger check` is clean.

use crate::helpers::*;
use crate::service::Service;
use lostwrite::nbd::client::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BS: usize = 4096;
const BLOCKS: u64 = 2048;

/// Per block: the contents the last completed FLUSH covered, and contents written since.
#[derive(Default)]
struct Model {
    flushed: HashMap<u64, u32>,
    since: HashMap<u64, Vec<u32>>,
}

fn writer(
    socket: std::path::PathBuf,
    seed: u64,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut rng = Rng(seed);
    let Ok(mut c) = Client::connect_unix(&socket, "") else {
        return 0;
    };
    let mut n = 0;
    let mut unflushed: Vec<(u64, u32)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Each writer owns every other block, so the model's order is the device's order.
        let b = (rng.next() % (BLOCKS / 2)) * 2 + seed % 2;
        let data = rng.block(BS);
        let sum = crc(&data);
        model.lock().unwrap().since.entry(b).or_default().push(sum);
        if c.write(b * BS as u64, &data, false).is_err() {
            break;
        }
        unflushed.push((b, sum));
        n += 1;
        if n % 4 == 0 {
            if c.flush().is_err() {
                break;
            }
            let mut m = model.lock().unwrap();
            for (b, sum) in unflushed.drain(..) {
                m.flushed.insert(b, sum);
                let later = m.since.entry(b).or_default();
                if let Some(i) = later.iter().position(|&s| s == sum) {
                    later.drain(..=i);
                }
            }
        }
    }
    n
}

#[test]
fn kill_9_under_load_loses_no_flushed_write() {
    let s = Scratch::new(BLOCKS * BS as u64);
    s.init(BS as u32, true);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = Rng(99);
    let mut total = 0;
    const CYCLES: usize = 6;
    for cycle in 0..CYCLES {
        let svc = Service::start(&s.image, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let (sock, m, st) = (svc.socket.clone(), model.clone(), stop.clone());
                std::thread::spawn(move || writer(sock, (cycle * 2 + w) as u64, m, st))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.next() % 400));
        svc.kill9();
        stop.store(true, Ordering::Relaxed);
        let writes: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(writes > 0, "cycle {cycle}: no writes went through");
        total += writes;
        // Every block holds its last flushed contents or something written after them.
        let image = std::fs::read(&s.image).unwrap();
        let m = model.lock().unwrap();
        for (&b, &sum) in &m.flushed {
            let now = crc(&image[b as usize * BS..(b as usize + 1) * BS]);
            let later = m.since.get(&b).map(|v| v.contains(&now)).unwrap_or(false);
            assert!(
                now == sum || later,
                "cycle {cycle}: block {b} lost a flushed write"
            );
        }
    }
    // A clean session after the crashes, then the ledger must stand up to every check.
    let svc = Service::start(&s.image, &[]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    c.write(0, &Rng(5).block(BS), false).unwrap();
    c.flush().unwrap();
    c.disconnect().unwrap();
    let log = svc.stop();
    assert!(
        log.contains("the previous session did not end cleanly"),
        "{log}"
    );
    verify_clean(&s.image);
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
    let st = lw_ok(bin().args(["status", "--json"]).arg(&s.image));
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["sessions_crashed"], CYCLES);
    eprintln!("{CYCLES} kill -9 cycles, {total} writes, verify and ledger check clean");
}
