//! The `lostwrite` binary: parse, run, pick the exit status. Errors print one line naming the
//! file, offset or argument and what to do, and exit with status 2 ("trouble"); `verify` and
//! `report` exit 1 for failing findings.

mod cli;

use clap::Parser;
use tracing_subscriber::filter::LevelFilter;

fn log_level(verbose: u8, service: bool) -> LevelFilter {
    if let Ok(v) = std::env::var("LOSTWRITE_LOG") {
        if let Ok(l) = v.parse::<LevelFilter>() {
            return l;
        }
    }
    match verbose {
        0 if service => LevelFilter::INFO,
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn init_logs<W>(writer: W, level: LevelFilter, json: bool, times: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_target(false);
    match (json, times) {
        (true, _) => fmt.json().flatten_event(true).init(),
        (false, true) => fmt.init(),
        (false, false) => fmt.without_time().init(),
    }
}

/// The error and its causes, each said once: a cause whose text the message already holds (an
/// OS error that a library error quotes) is not repeated.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

fn main() {
    let cli = cli::Cli::parse();
    let service = matches!(cli.command, cli::Command::Serve(_));
    let json = cli.log_json || std::env::var("LOSTWRITE_LOG_FORMAT").as_deref() == Ok("json");
    let level = log_level(cli.verbose, service);
    // The service never waits for its log, and no command panics on a closed stderr.
    if service {
        init_logs(lostwrite::logsink::QueuedStderr::start(), level, json, true);
    } else {
        init_logs(lostwrite::logsink::PlainStderr, level, json, false);
    }
    let mut code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let closed_pipe = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
            if closed_pipe {
                0
            } else {
                if service {
                    lostwrite::logsink::QueuedStderr::flush(std::time::Duration::from_secs(1));
                }
                cli::output::write_stderr(format_args!("lostwrite: error: {}\n", message(&e)));
                2
            }
        }
    };
    if let Some(e) = cli::output::finish_stdout() {
        cli::output::write_stderr(format_args!(
            "lostwrite: error: writing the output to stdout: {e} (nothing after that point was saved)\n"
        ));
        code = 2;
    }
    if service {
        lostwrite::logsink::QueuedStderr::flush(std::time::Duration::from_secs(2));
    }
    std::process::exit(code);
}
