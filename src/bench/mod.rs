//! `ignis-ws bench`: the fan-out load generator, and its hidden worker
//! subcommand `ignis-ws bench-worker`.
//!
//! It opens N WebSocket connections to a server speaking the Ignis protocol
//! (ignis-ws or Ignis on Bun), authenticates them and joins them to one
//! room, then publishes messages that reach every client — through Redis as
//! an Ignis emitter or through ignis-ws's `POST /api/publish` — at a set rate
//! or flat out, counts and times every delivery, and reports loss, latency,
//! throughput, connect rate, the server's CPU and memory per connection and
//! its own CPU.
//!
//! ```text
//! coordinator (this process, tokio current_thread)
//!   ├─ publisher: Redis pipeline or HTTP, paced by --rate or the flood window
//!   ├─ /proc sampling of --server-pid and of its own processes
//!   └─ K workers = `ignis-ws bench-worker …` (≤ 19,000 connections each: the
//!        machine allows 20,000 fds per process), JSON lines on stdin/stdout
//!        └─ tokio current_thread + LocalSet, one task per connection,
//!           one shared read buffer, ignis-ws's own frame codec
//! ```
//!
//! Modules:
//! * [`args`] — both command lines and their checks (a bad one exits 2).
//! * [`coordinator`] — phases, pacing, flood window, collecting the readings.
//! * [`launch`] — spawning workers (processes or threads) and their pipes.
//! * [`worker`] — connections and the per-delivery hot path.
//! * [`order`] — sequence numbers: duplicates, late arrivals, flood frontier.
//! * [`conn`] — one connection's setup: bind, connect, TLS, upgrade, auth, join.
//! * [`tls`] — wss://: the rustls client and the plain-or-TLS stream.
//! * [`publish`] — Redis and HTTP publishing.
//! * [`payload`] — the fixed-offset message format and the clock.
//! * [`wire`] — the coordinator ↔ worker JSON-lines protocol.
//! * [`sysstat`] — /proc readings (CPU ticks, RSS).
//! * [`report`] — the figures (JSON), the fold of the workers' reports
//!   into them, and the human table.
//! * [`progress`] — progress bars on stderr.
//!
//! Exit status: 0 when the run completed (loss is a figure, not a failure),
//! 1 when the setup failed (cannot connect, authentication refused, probe
//! never delivered, a worker died), 2 for bad arguments.

pub mod args;
pub mod conn;
pub mod coordinator;
pub mod launch;
pub mod order;
pub mod payload;
pub mod progress;
pub mod publish;
pub mod report;
pub mod shape;
pub mod sysstat;
pub mod tls;
pub mod wire;
pub mod worker;

#[cfg(test)]
mod tests;

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

pub use args::{BenchArgs, WorkerArgs};

use args::{ArgError, AuthArg};
use conn::{Auth, Setup};
use coordinator::Launch;
use wire::{Command, Event};
use worker::WorkerConfig;

/// `ignis-ws bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ignis-ws bench: {e}");
            return ExitCode::from(2);
        }
    };
    let json = plan.json;
    match coordinator::execute(plan, Launch::Processes) {
        Ok(report) => {
            let out = if json {
                serde_json::to_string_pretty(&report).map(|mut s| {
                    s.push('\n');
                    s
                })
            } else {
                Ok(report.render())
            };
            match out {
                Ok(s) => {
                    let _ = std::io::stdout().write_all(s.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ignis-ws bench: cannot encode the report: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("ignis-ws bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The worker's settings from its command line.
fn worker_config(a: &WorkerArgs) -> Result<WorkerConfig, ArgError> {
    let auth = match a.auth {
        AuthArg::Insecure => Auth::Insecure,
        AuthArg::Jwt => Auth::Jwt {
            secret: a
                .jwt_secret
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ArgError("--auth jwt needs the JWT secret".into()))?
                .into_bytes(),
        },
    };
    let tls = match &a.ca_file {
        None => None,
        Some(ca_file) => Some(
            tls::TlsClient::new(&tls::TlsOptions {
                ca_file: ca_file.clone(),
                server_name: a
                    .tls_server_name
                    .clone()
                    .ok_or_else(|| ArgError("--ca-file needs --tls-server-name".into()))?,
                tls12_only: a.tls12,
            })
            .map_err(ArgError)?,
        ),
    };
    Ok(WorkerConfig {
        id: a.id,
        setup: Setup {
            server: a.server,
            host: a.host.clone(),
            path: a.path.clone(),
            auth,
            room: a.room.clone(),
            tls,
        },
        connections: a.connections,
        first_index: a.first_index,
        source_ips: a.source_ips.clone().map(|l| l.0).unwrap_or_default(),
        connect_concurrency: usize::try_from(a.connect_concurrency).unwrap_or(512).max(1),
        connect_timeout: Duration::from_secs_f64(a.connect_timeout),
        users: a.users.max(1),
        flood: a.flood,
    })
}

/// Raises the soft fd limit to the hard one: a worker holds up to 19,000
/// sockets and the usual soft limit is 1,024.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            eprintln!("ignis-ws bench-worker: cannot raise the fd limit: {e}");
        }
    }
}

/// `ignis-ws bench-worker`: reads commands from stdin, writes events to
/// stdout, one JSON object per line.
pub fn run_worker(args: WorkerArgs) -> ExitCode {
    let cfg = match worker_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ignis-ws bench-worker: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Command>();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    // Pipes are blocking std I/O; keep them off the worker's event loop.
    let reader = std::thread::Builder::new()
        .name("bench-worker-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Command>(&line) {
                    Ok(c) => {
                        if cmd_tx.send(c).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("ignis-ws bench-worker: bad command {line:?}: {e}"),
                }
            }
            // EOF: the coordinator is gone; dropping cmd_tx ends the worker.
        });
    let writer = std::thread::Builder::new()
        .name("bench-worker-stdout".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            while let Some(ev) = ev_rx.blocking_recv() {
                let Ok(mut line) = serde_json::to_vec(&ev) else {
                    continue;
                };
                line.push(b'\n');
                if out.write_all(&line).is_err() {
                    break;
                }
                // Batch what is queued into one write; flush when caught up.
                if ev_rx.is_empty() && out.flush().is_err() {
                    break;
                }
            }
            let _ = out.flush();
        });
    let (Ok(_reader), Ok(writer)) = (reader, writer) else {
        eprintln!("ignis-ws bench-worker: cannot start its I/O threads");
        return ExitCode::from(1);
    };
    let result = worker::run_blocking(cfg, cmd_rx, ev_tx);
    // run_blocking dropped the event sender: the writer drains and ends.
    let _ = writer.join();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ignis-ws bench-worker: {e}");
            ExitCode::from(1)
        }
    }
}
