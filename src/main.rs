//! The `lostwrite` binary: parse, run, pick the exit status. Errors print one line naming the
//! file, offset or argument and what to do, and exit with status 2 ("trouble"); `verify` exits
//! 1 for failing findings.

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

fn main() {
    let cli = cli::Cli::parse();
    let service = matches!(cli.command, cli::Command::Serve(_));
    let json = cli.log_json || std::env::var("LOSTWRITE_LOG_FORMAT").as_deref() == Ok("json");
    let fmt = tracing_subscriber::fmt()
        .with_max_level(log_level(cli.verbose, service))
        .with_writer(std::io::stderr)
        .with_target(false);
    match (json, service) {
        (true, _) => fmt.json().flatten_event(true).init(),
        (false, true) => fmt.init(),
        (false, false) => fmt.without_time().init(),
    }
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    std::process::exit(0);
                }
            }
            eprintln!("lostwrite: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
