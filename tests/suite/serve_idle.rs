//! An idle `serve` uses no CPU: its main thread sleeps until a signal, a reload or a stop.
//! Without a metrics endpoint its channel of reload requests has no sender, and a select on
//! a disconnected channel returns at once: the main thread used to spin on it, taking most of
//! a core from the threads that serve requests.

use crate::helpers::*;
use crate::service::Service;
use std::time::Duration;

/// CPU clock ticks (user + system) the thread `tid` of `pid` has used so far.
fn thread_ticks(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // Fields after the command name, which ends at the last ')': utime and stime are the 14th
    // and 15th fields of the whole line, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn serve_main_thread_sleeps_while_idle_without_a_metrics_endpoint() {
    let s = Scratch::new(4 << 20);
    s.init(4096, true);
    let svc = Service::start(&s.image, &[]);
    let pid = svc.pid();
    // Past start-up: the main thread is in its wait for signals and reloads.
    std::thread::sleep(Duration::from_millis(500));
    let before = thread_ticks(pid, pid);
    std::thread::sleep(Duration::from_secs(4));
    let used = thread_ticks(pid, pid) - before;
    // A sleeping thread uses none; a spinning one, even on a loaded machine, tens of ticks
    // (a tick is 10 ms) in 4 s.
    assert!(
        used <= 2,
        "serve's main thread used {used} clock ticks of CPU in 4 s while idle: it is spinning"
    );
    svc.stop();
}
