//! Owns the workers' start and their transport: how the connections are
//! shared out among workers, the `bench-worker` command line, spawning a
//! worker process (JSON lines over its stdin/stdout) or thread (the
//! in-process test), and the coordinator's handle on each worker.
//!
//! Every event a worker sends arrives on one channel as
//! `(worker id, Incoming)`; a worker whose output ends or cannot be parsed
//! is reported as `Incoming::Gone`, never trusted further.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::args::{AuthArg, JWT_SECRET_ENV, Pace, Plan};
use super::conn::{Auth, Setup};
use super::coordinator::BenchError;
use super::tls::TlsClient;
use super::wire::{Command, Event, Progress, Ready, WorkerReport};
use super::worker::{self, WorkerConfig};

/// Where workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `current_exe() bench-worker …`, JSON lines over pipes.
    Processes,
    /// Threads of this process (tests).
    InProcess,
}

/// What a worker's event stream carries to the coordinator.
pub(super) enum Incoming {
    Event(Event),
    /// The worker's event stream ended.
    Gone(String),
}

/// The coordinator's handle on one worker and what it last reported.
pub(super) struct Worker {
    pub(super) pid: Option<u32>,
    pub(super) tx: mpsc::UnboundedSender<Command>,
    pub(super) progress: Progress,
    pub(super) frontier: u64,
    pub(super) live: u64,
    pub(super) ready: Option<Ready>,
    pub(super) report: Option<WorkerReport>,
    pub(super) gone: Option<String>,
    pub(super) child: Option<tokio::process::Child>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// A worker that has reported nothing yet.
    fn new(
        pid: Option<u32>,
        tx: mpsc::UnboundedSender<Command>,
        child: Option<tokio::process::Child>,
        thread: Option<std::thread::JoinHandle<()>>,
    ) -> Worker {
        Worker {
            pid,
            tx,
            progress: Progress::default(),
            frontier: 0,
            live: 0,
            ready: None,
            report: None,
            gone: None,
            child,
            thread,
        }
    }
}

/// Each worker's settings: the plan's connections spread evenly.
pub(super) fn worker_configs(p: &Plan) -> Result<Vec<WorkerConfig>, String> {
    // Checked by the plan already; built once here for in-process workers
    // (a worker process builds its own from the flags).
    let tls = p.tls.as_ref().map(TlsClient::new).transpose()?;
    let auth = match (p.auth, &p.jwt_secret) {
        (AuthArg::Jwt, Some(s)) => Auth::Jwt {
            secret: s.as_bytes().to_vec(),
        },
        _ => Auth::Insecure,
    };
    let setup = Setup {
        server: p.target.addr,
        host: p.target.host.clone(),
        path: p.target.path.clone(),
        auth,
        room: p.room.clone(),
        tls,
    };
    let k = p.workers.max(1);
    let mut first = 0;
    Ok((0..k)
        .map(|i| {
            // Spread evenly: the first N mod K workers take one more.
            let n = p.connections / k + u64::from(i < p.connections % k);
            let cfg = WorkerConfig {
                id: i,
                setup: setup.clone(),
                connections: n,
                first_index: first,
                source_ips: p.source_ips.clone(),
                connect_concurrency: usize::try_from(p.connect_concurrency).unwrap_or(512),
                connect_timeout: p.connect_timeout,
                users: p.users,
                flood: matches!(p.pace, Pace::Flood { .. }),
            };
            first += n;
            cfg
        })
        .collect())
}

/// Starts worker `id` with `cfg` as `launch` says; its events go to `tx`.
pub(super) fn spawn(
    launch: Launch,
    id: usize,
    cfg: WorkerConfig,
    jwt_secret: Option<&str>,
    tx: &mpsc::UnboundedSender<(usize, Incoming)>,
) -> Result<Worker, BenchError> {
    match launch {
        Launch::Processes => spawn_process(id, &cfg, jwt_secret, tx),
        Launch::InProcess => spawn_thread(id, cfg, tx),
    }
}

/// The `bench-worker` command line of `cfg` (the JWT secret travels apart).
fn worker_args(cfg: &WorkerConfig) -> Vec<String> {
    let mut a = vec![
        "bench-worker".to_owned(),
        format!("--id={}", cfg.id),
        format!("--server={}", cfg.setup.server),
        format!("--host={}", cfg.setup.host),
        format!("--path={}", cfg.setup.path),
        format!("--connections={}", cfg.connections),
        format!("--first-index={}", cfg.first_index),
        format!("--connect-concurrency={}", cfg.connect_concurrency),
        format!("--connect-timeout={}", cfg.connect_timeout.as_secs_f64()),
        format!("--users={}", cfg.users),
        format!("--room={}", cfg.setup.room),
        format!(
            "--auth={}",
            match cfg.setup.auth {
                Auth::Insecure => "insecure",
                Auth::Jwt { .. } => "jwt",
            }
        ),
    ];
    if let Some(tls) = &cfg.setup.tls {
        a.push(format!("--ca-file={}", tls.opts.ca_file.display()));
        a.push(format!("--tls-server-name={}", tls.opts.server_name));
        if tls.opts.tls12_only {
            a.push("--tls12".into());
        }
    }
    if !cfg.source_ips.is_empty() {
        let ips: Vec<String> = cfg.source_ips.iter().map(ToString::to_string).collect();
        a.push(format!("--source-ips={}", ips.join(",")));
    }
    if cfg.flood {
        a.push("--flood".into());
    }
    a
}

/// `current_exe() bench-worker …`: commands as JSON lines on its stdin,
/// events read from its stdout; a line that is not an event ends it.
fn spawn_process(
    id: usize,
    cfg: &WorkerConfig,
    jwt_secret: Option<&str>,
    tx: &mpsc::UnboundedSender<(usize, Incoming)>,
) -> Result<Worker, BenchError> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Spawn { id, source })?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(worker_args(cfg))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // The secret travels in the environment, not on a command line `ps` shows.
    match jwt_secret {
        Some(s) => cmd.env(JWT_SECRET_ENV, s),
        None => cmd.env_remove(JWT_SECRET_ENV),
    };
    let mut child = cmd
        .spawn()
        .map_err(|source| BenchError::Spawn { id, source })?;
    let (Some(stdout), Some(mut stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(BenchError::Spawn {
            id,
            source: std::io::Error::other("no pipes"),
        });
    };
    let events = tx.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                    Ok(e) => {
                        let _ = events.send((id, Incoming::Event(e)));
                    }
                    Err(e) => {
                        let _ = events.send((id, Incoming::Gone(format!("bad event line: {e}"))));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send((id, Incoming::Gone(format!("reading its output: {e}"))));
                    return;
                }
            }
        }
        let _ = events.send((id, Incoming::Gone("exited".into())));
    });
    let (ctx, mut crx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(c) = crx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&c) else {
                continue;
            };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    Ok(Worker::new(child.id(), ctx, Some(child), None))
}

/// A worker thread of this process, on in-process channels.
fn spawn_thread(
    id: usize,
    cfg: WorkerConfig,
    tx: &mpsc::UnboundedSender<(usize, Incoming)>,
) -> Result<Worker, BenchError> {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (etx, mut erx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name(format!("bench-worker-{id}"))
        .spawn(move || {
            if let Err(e) = worker::run_blocking(cfg, crx, etx) {
                eprintln!("ignis-ws bench-worker {id}: {e}");
            }
        })
        .map_err(|source| BenchError::Spawn { id, source })?;
    let events = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = erx.recv().await {
            let _ = events.send((id, Incoming::Event(e)));
        }
        let _ = events.send((id, Incoming::Gone("ended".into())));
    });
    Ok(Worker::new(None, ctx, None, Some(thread)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn worker_args_round_trip_through_clap() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            BenchWorker(super::super::WorkerArgs),
        }
        let cfg = WorkerConfig {
            id: 3,
            setup: Setup {
                server: "127.0.0.1:9000".parse().unwrap(),
                host: "127.0.0.1:9000".into(),
                path: "/ws".into(),
                auth: Auth::Insecure,
                room: "r,oom with space".into(),
                tls: None,
            },
            connections: 12_500,
            first_index: 12_500,
            source_ips: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            connect_concurrency: 512,
            connect_timeout: Duration::from_millis(1500),
            users: 7,
            flood: true,
        };
        let mut argv = vec!["ignis-ws".to_owned()];
        argv.extend(worker_args(&cfg));
        let Sub::BenchWorker(a) = Cli::try_parse_from(argv).unwrap().cmd;
        let back = super::super::worker_config(&a).unwrap();
        assert_eq!(back.id, 3);
        assert_eq!(back.connections, 12_500);
        assert_eq!(back.first_index, 12_500);
        assert_eq!(back.source_ips, cfg.source_ips);
        assert_eq!(back.setup.room, cfg.setup.room);
        assert_eq!(back.connect_timeout, cfg.connect_timeout);
        assert_eq!(back.users, 7);
        assert!(back.flood);
        assert!(back.setup.tls.is_none());

        // wss://: the TLS settings travel as flags.
        let dir = std::env::temp_dir().join(format!("ignis-bench-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, crate::bench::tls::TEST_CA_PEM).unwrap();
        let opts = crate::bench::tls::TlsOptions {
            ca_file: ca,
            server_name: "localhost".into(),
            tls12_only: true,
        };
        let mut cfg = cfg;
        cfg.setup.tls = Some(TlsClient::new(&opts).unwrap());
        let mut argv = vec!["ignis-ws".to_owned()];
        argv.extend(worker_args(&cfg));
        let Sub::BenchWorker(a) = Cli::try_parse_from(argv).unwrap().cmd;
        let back = super::super::worker_config(&a).unwrap();
        assert_eq!(back.setup.tls.unwrap().opts, opts);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
