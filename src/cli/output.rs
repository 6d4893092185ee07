//! Standard output and standard error for the commands. A reader that closes the pipe early
//! (`lostwrite verify | head -1`) is not an error: output stops quietly, the command finishes
//! its work and exits with the status it would have had. Any other failure to write (a full
//! disk under `verify --json > findings.json`) is kept and reported by `main` with exit 2, so
//! evidence that was not saved is never passed off as saved.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes to stdout, unless an earlier write found it closed or failing.
pub fn write_stdout(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let r = io::stdout().lock().write_fmt(args);
    if let Err(e) = r {
        note_stdout_error(e);
    }
}

/// Records a failed write to stdout: a closed pipe silences further output, anything else is
/// kept for [`finish_stdout`].
pub fn note_stdout_error(e: io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe {
        let mut slot = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }
}

/// Flushes stdout and returns the first real write error (a closed pipe is not one).
pub fn finish_stdout() -> Option<io::Error> {
    if !STDOUT_CLOSED.load(Ordering::Relaxed) {
        if let Err(e) = io::stdout().lock().flush() {
            note_stdout_error(e);
        }
    }
    STDOUT_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// Writes to stderr, dropping the text if stderr is closed or failing: a message about a
/// problem must never become a second one.
pub fn write_stderr(args: std::fmt::Arguments) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::cli::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
