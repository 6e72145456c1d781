//! The `ignis-ws` binary: parse the configuration, start the shards, wait
//! for SIGINT/SIGTERM, shut down cleanly (1001 to every client after
//! flushing).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ignis_ws::config::ServeArgs;
use ignis_ws::{Error, ServerBuilder};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core WebSocket fan-out server for the Ignis WebSocket
/// protocol.
#[derive(Debug, Parser)]
#[command(name = "ignis-ws", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

fn serve(args: ServeArgs) -> ExitCode {
    let args = match args.with_file() {
        Ok(a) => a,
        Err(e) => return config_error(&e.to_string()),
    };
    init_logging(args.log.as_deref());
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()),
    };
    let server = match ServerBuilder::new(config).start() {
        Ok(s) => s,
        Err(Error::Config(e)) => return config_error(&e.to_string()),
        Err(e) => {
            eprintln!("ignis-ws: {e}");
            return ExitCode::from(1);
        }
    };
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ignis-ws: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down: closing clients with 1001");
    }
    server.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn config_error(msg: &str) -> ExitCode {
    eprintln!("ignis-ws: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
    }
}
