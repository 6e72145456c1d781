//! The `ignis-ws` binary: parse the configuration, start the shards, wait
//! for SIGINT/SIGTERM, shut down cleanly (1001 to every client after
//! flushing). SIGHUP reloads the TLS certificate and key.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Subcommand};
use ignis_ws::config::{LogFormat, ServeArgs};
use ignis_ws::{Error, ServerBuilder};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core WebSocket fan-out server for the Ignis WebSocket
/// protocol.
#[derive(Debug, clap::Parser)]
#[command(name = "ignis-ws", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Publish one message through Redis, exactly as Ignis's
    /// WebSocketEmitter does (every ignis-ws and Ignis server on that Redis
    /// delivers it).
    Emit(EmitArgs),
    /// Fan-out load generator: N connections, publish, count every
    /// delivery (loss, latency, throughput, server CPU and memory).
    #[cfg(feature = "bench")]
    Bench(Box<ignis_ws::bench::BenchArgs>),
    /// Internal: one worker process of `bench`.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchWorker(ignis_ws::bench::WorkerArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["client", "user", "room", "broadcast"])))]
struct EmitArgs {
    /// Redis URL (redis://[user:password@]host:port, rediss:// for TLS);
    /// with --sharded, Redis Cluster nodes, comma separated.
    #[arg(long, env = "IGNIS_WS_REDIS", value_name = "URL")]
    redis: String,
    /// Sharded pub/sub on Redis Cluster 7+: room, user and client messages
    /// by SPUBLISH, as ignis-ws --redis-sharded nodes listen (Ignis on Bun
    /// does not hear them).
    #[arg(long)]
    sharded: bool,
    /// To one client id.
    #[arg(long, value_name = "ID")]
    client: Option<String>,
    /// To every session of a user id.
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    /// To every member of a room.
    #[arg(long, value_name = "NAME")]
    room: Option<String>,
    /// To every authenticated client.
    #[arg(long)]
    broadcast: bool,
    /// Client ids to leave out (with --room), comma separated.
    #[arg(long, value_name = "ID,…", requires = "room")]
    exclude: Option<String>,
    /// Event name.
    #[arg(long, value_name = "NAME")]
    event: String,
    /// Data as JSON; `-` reads it from stdin. Absent: no `data` key.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
}

impl std::fmt::Debug for EmitArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmitArgs")
            .field("redis", &ignis_ws::secrets::redact_url(&self.redis))
            .field("sharded", &self.sharded)
            .field("client", &self.client)
            .field("user", &self.user)
            .field("room", &self.room)
            .field("broadcast", &self.broadcast)
            .field("exclude", &self.exclude)
            .field("event", &self.event)
            .field("data", &self.data)
            .finish()
    }
}

fn emit(args: EmitArgs) -> ExitCode {
    use ignis_ws::bridge::emitter::Emitter;
    use ignis_ws::bridge::envelope::Kind;
    let data = match args.data.as_deref() {
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                return config_error(&format!("--data -: cannot read stdin: {e}"));
            }
            Some(s)
        }
        other => other.map(str::to_owned),
    };
    if let Some(d) = &data
        && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(d)
    {
        return config_error(&format!("--data is not valid JSON: {e}"));
    }
    let (kind, target) = if let Some(c) = &args.client {
        (Kind::Client, Some(c.as_str()))
    } else if let Some(u) = &args.user {
        (Kind::User, Some(u.as_str()))
    } else if let Some(r) = &args.room {
        (Kind::Room, Some(r.as_str()))
    } else {
        (Kind::Broadcast, None)
    };
    let exclude = args.exclude.as_deref().map(ignis_ws::config::comma_list);
    let exclude_refs: Option<Vec<&str>> = exclude
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ignis-ws emit: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let emitter = if args.sharded {
            let nodes = ignis_ws::config::comma_list(&args.redis);
            let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
            Emitter::connect_sharded(&refs).await?
        } else {
            Emitter::connect(&args.redis).await?
        };
        emitter
            .publish_raw(
                kind,
                target,
                &args.event,
                data.as_deref().map(str::as_bytes),
                exclude_refs.as_deref(),
            )
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ignis-ws emit: {e}");
            ExitCode::from(1)
        }
    }
}

/// The global subscriber: `filter` (else RUST_LOG, else `info`), lines in
/// `format` on stdout. JSON is one object per line (timestamp, level,
/// target, `fields` with `message`, and the spans' fields), for journald
/// plus `jq` or a log shipper.
fn init_logging(filter: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Secret-valued `serve` flags, with their environment variable and file
/// flag (if any). URL flags count only when the URL carries credentials.
const SECRET_FLAGS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "api_key",
        "--api-key",
        "IGNIS_WS_API_KEY",
        Some("--api-key-file"),
    ),
    (
        "jwt_secret",
        "--jwt-secret",
        "IGNIS_WS_JWT_SECRET",
        Some("--jwt-secret-file"),
    ),
    ("redis", "--redis", "IGNIS_WS_REDIS", None),
    (
        "redis_cluster",
        "--redis-cluster",
        "IGNIS_WS_REDIS_CLUSTER",
        None,
    ),
    ("auth_url", "--auth-url", "IGNIS_WS_AUTH_URL", None),
    (
        "events_webhook",
        "--events-webhook",
        "IGNIS_WS_EVENTS_WEBHOOK",
        None,
    ),
];

/// The secret flags given on the command line itself (not through the
/// environment), which every local user can read in the process list.
fn secrets_on_command_line(serve: &ArgMatches) -> Vec<usize> {
    SECRET_FLAGS
        .iter()
        .enumerate()
        .filter(|(_, (id, _, _, file))| {
            serve.value_source(id) == Some(ValueSource::CommandLine)
                && (file.is_some()
                    || serve
                        .get_one::<String>(id)
                        .is_some_and(|u| ignis_ws::secrets::has_credentials(u)))
        })
        .map(|(i, _)| i)
        .collect()
}

fn serve(args: ServeArgs, on_command_line: &[usize]) -> ExitCode {
    let args = match args.with_file() {
        Ok(a) => a,
        Err(e) => return config_error(&e.to_string()),
    };
    init_logging(args.log.as_deref(), args.log_format.unwrap_or_default());
    for &i in on_command_line {
        let Some(&(_, flag, env, file)) = SECRET_FLAGS.get(i) else {
            continue;
        };
        let instead = match file {
            Some(file) => format!("{env}, {file} or the --config file"),
            None => format!("{env} or the --config file"),
        };
        tracing::warn!(
            "{flag} is given on the command line, where its secret is visible to every \
             local user in the process list (ps, /proc/PID/cmdline); use {instead} instead"
        );
    }
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()),
    };
    // Before the server starts (and logs that it listens): a signal that
    // arrives early must still mean a clean shutdown, not the default kill.
    // SIGHUP (systemd's ExecReload) is caught too: its default action
    // would terminate the server.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ignis-ws: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match ServerBuilder::new(config).start() {
        Ok(s) => s,
        Err(Error::Config(e)) => return config_error(&e.to_string()),
        Err(e) => {
            eprintln!("ignis-ws: {e}");
            return ExitCode::from(1);
        }
    };
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            match server.reload_tls() {
                Ok(true) => tracing::info!(
                    "SIGHUP: TLS certificate and key reloaded; new handshakes use them"
                ),
                Ok(false) => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS reload failed; the current certificate stays in use"
                ),
            }
            continue;
        }
        tracing::info!(
            signal = sig,
            "shutting down: /ready answers 503, then clients are closed with 1001"
        );
        break;
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let on_command_line = matches
        .subcommand_matches("serve")
        .map(secrets_on_command_line)
        .unwrap_or_default();
    match cli.command {
        Command::Serve(args) => serve(*args, &on_command_line),
        Command::Emit(args) => emit(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => ignis_ws::bench::run(*args),
        #[cfg(feature = "bench")]
        Command::BenchWorker(args) => ignis_ws::bench::run_worker(args),
    }
}
