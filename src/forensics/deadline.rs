//! Running a helper program (debugfs, xfs_db) under a deadline: a reader of a damaged
//! filesystem may loop, and nothing of lostwrite's may wait on it for ever. Shared by every
//! filesystem reader; below them and the seam ([`super::fs`]) that chooses between them.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished helper program printed.
pub struct Output {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` with `input` on its standard input, killing it (and saying so) if it has not
/// finished within `deadline`: a reader of a damaged filesystem may loop. It runs in a process
/// group of its own, killed and reaped on every way out, so that nothing it started lingers
/// holding its output pipes open.
pub fn run_with_deadline(
    cmd: &mut Command,
    input: String,
    deadline: Duration,
) -> Result<Output, String> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let name = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut child = Group {
        child,
        reaped: false,
    };
    let mut stdin = child.child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(child.child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.child.stderr.take().map(|s| Box::new(s) as _));
    let t = Instant::now();
    loop {
        match child.exited() {
            Ok(true) => break,
            Ok(false) if t.elapsed() > deadline => {
                return Err(format!(
                    "{name} did not finish within {} and was stopped",
                    seconds(deadline)
                ));
            }
            Ok(false) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    let status = child.reap().map_err(|e| format!("{name}: {e}"))?;
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A child leading its own process group: the group is killed and the child reaped when this
/// is dropped, whichever way the caller leaves.
struct Group {
    child: std::process::Child,
    /// Whether `child` has been waited for.
    reaped: bool,
}

impl Group {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Whether the child has exited, without reaping it (so its group id stays its own).
    fn exited(&self) -> std::io::Result<bool> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid()), flags) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Kills what is left of the group and reaps the child.
    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        // The child is not reaped yet, so the group id is still its own.
        let _ = nix::sys::signal::killpg(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        self.reaped = true;
        self.child.wait()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.reap();
        }
    }
}

/// A duration as a person reads it: "200 ms", "1.5 s", "60 s".
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_that_hangs_is_stopped_at_its_deadline() {
        let t = Instant::now();
        let e = run_with_deadline(
            Command::new("sleep").arg("30"),
            String::new(),
            Duration::from_millis(200),
        )
        .err()
        .expect("stopped");
        assert!(e.contains("did not finish within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let o = run_with_deadline(
            &mut Command::new("cat"),
            "hi\n".into(),
            Duration::from_secs(10),
        )
        .expect("cat runs");
        assert_eq!(o.stdout, "hi\n");
    }

    #[test]
    fn what_a_helper_leaves_running_is_stopped_with_it() {
        // The grandchild keeps the output pipe open: only killing the group ends the read.
        let t = Instant::now();
        let o = run_with_deadline(
            Command::new("sh").args(["-c", "sleep 30 & echo started"]),
            String::new(),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(o.stdout, "started\n");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(seconds(Duration::from_millis(200)), "200 ms");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_secs(60)), "60 s");
    }
}
