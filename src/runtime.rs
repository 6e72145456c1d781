//! Thread-per-core start-up: resolve the I/O back end, raise the fd limit,
//! bind one SO_REUSEPORT listener per shard, start the control thread and
//! the shard threads (each pinned, each with its own compio runtime), and
//! hand back a [`Server`] with its [`Handle`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{Authenticator, RoomValidator};
use crate::config::{AuthMode, Config, ConfigError};
use crate::control::Control;
use crate::error::Error;
use crate::handle::{Handle, Inner};
use crate::hooks::{Hooks, NoHooks};
use crate::io::backend::{self as driver, Backend};
use crate::io::calls::Calls;
use crate::io::shard_io::ShardIo;
use crate::io::{accept, parked, tasks};
use crate::metrics::{Registry, ShardMetrics};
use crate::shard::{Shard, ShardCommand, ShardCtx};

/// Builds a [`Server`] from a [`Config`] plus the library-only pieces.
pub struct ServerBuilder {
    config: Config,
    authenticator: Option<Arc<dyn Authenticator>>,
    room_validator: Option<Arc<dyn RoomValidator>>,
    hooks: Arc<dyn Hooks>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .finish()
    }
}

/// A running server.
pub struct Server {
    handle: Handle,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    backend: Backend,
    threads: Vec<JoinHandle<()>>,
    control: Option<Control>,
    /// `--drain-delay-ms`.
    drain_delay: Duration,
    /// `--tls-cert`: what [`Server::reload_tls`] reloads.
    tls: Option<Arc<crate::tls::Tls>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("backend", &self.backend)
            .finish()
    }
}

impl ServerBuilder {
    /// Start from a configuration.
    pub fn new(config: Config) -> Self {
        ServerBuilder {
            config,
            authenticator: None,
            room_validator: None,
            hooks: Arc::new(NoHooks),
        }
    }

    /// Use this authenticator (overrides `config.auth`).
    pub fn authenticator(mut self, a: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(a));
        self
    }

    /// Use this room validator (overrides `config.room_allow`).
    pub fn room_validator(mut self, v: impl RoomValidator) -> Self {
        self.room_validator = Some(Arc::new(v));
        self
    }

    /// Lifecycle hooks.
    pub fn hooks(mut self, h: impl Hooks) -> Self {
        self.hooks = Arc::new(h);
        self
    }

    fn make_authenticator(&self) -> Result<Arc<dyn Authenticator>, Error> {
        if let Some(a) = &self.authenticator {
            return Ok(a.clone());
        }
        use crate::auth::{
            InsecureAuthenticator, JwtAuthenticator, JwtConfig, JwtKey, WebhookAuthenticator,
        };
        let key_err =
            |key: &'static str, message: String| Error::Config(ConfigError { key, message });
        Ok(match &self.config.auth {
            AuthMode::Insecure => {
                tracing::warn!(
                    "--auth insecure: EVERY client is accepted with the userId it claims. \
                     For development and benchmarks only; never expose this server."
                );
                Arc::new(InsecureAuthenticator)
            }
            AuthMode::Jwt {
                secret,
                public_key_files,
                jwks,
                leeway_s,
                audience,
                issuer,
                require_exp,
                max_age_s,
            } => {
                let mut keys = Vec::new();
                if let Some(s) = secret {
                    keys.push(JwtKey::Hs256(s.as_bytes().to_vec()));
                }
                for path in public_key_files {
                    let pem = std::fs::read(path).map_err(|e| {
                        key_err(
                            "--jwt-public-key",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    keys.push(JwtKey::from_public_key_pem(pem).map_err(|e| {
                        key_err("--jwt-public-key", format!("{}: {e}", path.display()))
                    })?);
                }
                let cfg = JwtConfig {
                    keys,
                    jwks: jwks.clone(),
                    leeway_s: *leeway_s,
                    audience: audience.clone(),
                    issuer: issuer.clone(),
                    require_exp: *require_exp,
                    max_age_s: *max_age_s,
                };
                if !*require_exp {
                    tracing::warn!(
                        "--jwt-require-exp false: tokens without exp are accepted and never expire"
                    );
                }
                Arc::new(JwtAuthenticator::new(cfg).map_err(|e| {
                    use crate::auth::JwtConfigError as E;
                    let key = match e {
                        E::EmptySecret | E::ShortSecret(_) | E::NoKey => "--jwt-secret",
                        E::LeewayTooLarge(_) => "--jwt-leeway-s",
                        E::ZeroMaxAge => "--jwt-max-age-s",
                        E::Jwks(_) => "--jwt-jwks-url",
                        _ => "--jwt-public-key",
                    };
                    key_err(key, e.to_string())
                })?)
            }
            AuthMode::Webhook {
                url,
                timeout,
                concurrency,
            } => Arc::new(
                WebhookAuthenticator::with_concurrency(url.clone(), *timeout, *concurrency)
                    .map_err(|e| key_err("--auth-url", e.to_string()))?,
            ),
            AuthMode::Custom => {
                return Err(key_err(
                    "--auth",
                    "no authenticator: set config.auth or call ServerBuilder::authenticator".into(),
                ));
            }
        })
    }

    fn make_room_validator(&self) -> Option<Arc<dyn RoomValidator>> {
        if let Some(v) = &self.room_validator {
            return Some(v.clone());
        }
        let token_rooms = matches!(
            self.config.auth,
            AuthMode::Jwt { .. } | AuthMode::Webhook { .. }
        );
        if self.config.room_allow.is_empty() && !token_rooms {
            // As in Ignis without `validateRoomFn`: joins are refused.
            return None;
        }
        let validator = crate::auth::GlobRoomValidator::new(self.config.room_allow.clone());
        for p in validator.patterns() {
            if p.uses_user_id() && !p.isolates_user_id() {
                tracing::warn!(
                    pattern = p.as_str(),
                    "--room-allow: {{userId}} in this pattern is not a whole `:`-segment at a \
                     fixed position, so different users may match the same room; prefer e.g. \
                     user:{{userId}}:*"
                );
            }
        }
        Some(Arc::new(validator))
    }

    /// Bind, start every thread, return when the server accepts connections.
    pub fn start(self) -> Result<Server, Error> {
        self.config.validate()?;
        let authenticator = self.make_authenticator()?;
        let room_validator = self.make_room_validator();
        let mut config = self.config.clone();
        let backend = driver::resolve(config.io).map_err(Error::Runtime)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if config.shards == 0 {
            config.shards = cores;
        }
        let fd_limit = raise_fd_limit();
        if config.max_connections == 0 {
            // Each connection is one fd; keep some for listeners, the
            // runtime, Redis and logs.
            config.max_connections = fd_limit.saturating_sub(64).max(1) as usize;
            tracing::info!(
                fd_limit,
                max_connections = config.max_connections,
                "--max-connections sized from the file-descriptor limit"
            );
        }
        let n = config.shards;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(crate::tls::Tls::load(cert, key).map_err(|e| {
                    Error::Config(ConfigError {
                        key: e.key,
                        message: e.message,
                    })
                })?))
            }
            _ => None,
        };
        let defer = config
            .defer_accept
            .then(|| config.handshake_timeout.as_secs().max(1));
        let listeners = bind_all(config.listen, n, defer)?;
        let local_addr = listeners[0]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(config.listen);
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| Error::Listen { addr, source })?;
                Some(l)
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let config = Arc::new(config);
        let control = Control::start_with(config.control_max_tasks)?;
        let metrics: Vec<Arc<ShardMetrics>> =
            (0..n).map(|_| Arc::new(ShardMetrics::default())).collect();
        let tls_ca = match &config.redis_tls_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                Error::Config(ConfigError {
                    key: "--redis-tls-ca",
                    message: format!("cannot read {}: {e}", p.display()),
                })
            })?),
            None => None,
        };
        let sentinel = config.redis_sentinel_master.as_ref().and_then(|master| {
            (!config.redis_sentinel.is_empty()).then(|| crate::bridge::sentinel::SentinelConfig {
                sentinels: config
                    .redis_sentinel
                    .iter()
                    .map(|a| crate::bridge::sentinel::sentinel_url(a))
                    .collect(),
                master: master.clone(),
            })
        });
        // Interest on classic pub/sub: clients are heard through this
        // process's tag (two patterns), not two channels each. Sharded
        // pub/sub has no patterns: there each client has its channels.
        let client_tag = ((!config.redis.is_empty() || sentinel.is_some())
            && config.redis_subscribe == crate::config::RedisSubscribe::Interest
            && !config.redis_sharded)
            .then(|| (uuid::Uuid::new_v4().as_u64_pair().0 >> 32) as u32);
        let bridge_cfg =
            (!config.redis.is_empty() || sentinel.is_some()).then(|| crate::bridge::BridgeConfig {
                urls: config.redis.clone(),
                outbox: config.redis_outbox,
                max_message: config.redis_max_message,
                tls_ca,
                sentinel,
                sharded: config.redis_sharded,
                client_tag,
            });
        let bridge = bridge_cfg.as_ref().map(crate::bridge::outbox);
        let events_metrics = (config.events_channel.is_some() || config.events_webhook.is_some())
            .then(|| Arc::new(crate::metrics::EventsMetrics::default()));
        let registry = Arc::new(Registry {
            bridge: bridge.as_ref().map(|(p, _)| p.metrics().clone()),
            events: events_metrics.clone(),
            shards: metrics.clone(),
            started: Instant::now(),
            io_backend: backend.name(),
            max_connections: config.max_connections,
            control: control.handle().stats().clone(),
            draining: Default::default(),
        });
        // Shards report what they need to hear to the Redis subscriber.
        let (interest_tx, interest_rx) = match (&bridge_cfg, config.redis_subscribe) {
            (Some(_), crate::config::RedisSubscribe::Interest) => {
                let (tx, rx) = flume::unbounded();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let admin = bridge_cfg
            .as_ref()
            .map(|_| flume::bounded(crate::bridge::admin::ADMIN_QUEUE));
        let channels: Vec<(flume::Sender<ShardCommand>, flume::Receiver<ShardCommand>)> =
            (0..n).map(|_| flume::unbounded()).collect();
        let handle = Handle {
            inner: Arc::new(Inner {
                shards: channels.iter().map(|(tx, _)| tx.clone()).collect(),
                registry: registry.clone(),
                control: control.handle(),
                bridge: bridge.as_ref().map(|(p, _)| p.clone()),
                interest: interest_tx.clone(),
                admin: admin.as_ref().map(|(tx, _)| tx.clone()),
                queue_limit: config.shard_queue_limit,
            }),
        };
        let hooks: Arc<dyn Hooks> = match events_metrics {
            Some(m) => Arc::new(crate::hooks::Forwarding::new(
                self.hooks.clone(),
                config.events_channel.clone(),
                config
                    .events_webhook
                    .clone()
                    .map(|url| crate::hooks::EventsWebhook {
                        url,
                        queue: config.events_webhook_queue,
                        concurrency: config.events_webhook_concurrency,
                        timeout: config.events_webhook_timeout,
                    }),
                handle.bridge().cloned(),
                control.handle(),
                m,
            )?),
            None => self.hooks.clone(),
        };
        let per_shard = config.max_connections.div_ceil(n).max(1);
        let mut admission = crate::io::accept::Admission::new(&config);
        admission.tls = tls.clone();
        let admission = Arc::new(admission);
        let sessions = (config.max_sessions_per_user > 0).then(|| {
            Arc::new(crate::shard::sessions::UserSessions::new(
                config.max_sessions_per_user,
            ))
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::with_capacity(n);
        for (i, (listener, (tx, rx))) in listeners.into_iter().zip(channels).enumerate() {
            let ctx = ShardCtx {
                index: i,
                config: config.clone(),
                metrics: metrics[i].clone(),
                max_conns: per_shard,
                has_room_validator: room_validator.is_some(),
                wants_messages: hooks.wants_messages(),
                wants_lifecycle: hooks.wants_lifecycle(),
                sessions: sessions.clone(),
                client_tag,
            };
            let calls = Calls {
                authenticator: authenticator.clone(),
                room_validator: room_validator.clone(),
                hooks: hooks.clone(),
                control: control.handle(),
                self_tx: tx,
            };
            let admission = admission.clone();
            let core = config.pin_cores.then_some(i % cores);
            let registry = registry.clone();
            let ready = ready_tx.clone();
            let h = handle.clone();
            let interest = interest_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("ignis-shard-{i}"))
                .spawn(move || {
                    run_shard(
                        ctx, calls, admission, backend, core, listener, rx, registry, h, interest,
                        ready,
                    )
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    for tx in &handle.inner.shards {
                        let _ = tx.send(ShardCommand::Shutdown);
                    }
                    return Err(Error::Runtime(std::io::Error::other(e)));
                }
                Err(_) => {
                    return Err(Error::Runtime(std::io::Error::other(
                        "a shard thread died at start",
                    )));
                }
            }
        }
        if let Some(l) = metrics_listener {
            control.handle().spawn(Box::pin(crate::http::serve_private(
                l,
                registry.clone(),
                config.max_handshake_bytes,
                config.handshake_timeout,
            )));
        }
        if let (Some(cfg), Some((publisher, outbox)), Some(admin)) = (bridge_cfg, bridge, admin) {
            crate::bridge::start(
                cfg,
                &publisher,
                outbox,
                Arc::new(handle.clone()),
                &control.handle(),
                interest_rx,
                admin,
                Arc::new(handle.clone()),
            );
        }
        tracing::info!(
            addr = %local_addr,
            path = %config.path,
            shards = n,
            io = backend.name(),
            encryption = ?config.encryption,
            tls = config.tls_cert.is_some(),
            metrics = %metrics_addr.map_or_else(|| "on addr".to_owned(), |a| a.to_string()),
            "ignis-ws listening"
        );
        Ok(Server {
            handle,
            local_addr,
            metrics_addr,
            backend,
            threads,
            control: Some(control),
            drain_delay: config.drain_delay,
            tls,
        })
    }
}

impl Server {
    /// Start a server with the authenticator named by `config.auth`.
    pub fn start(config: Config) -> Result<Server, Error> {
        ServerBuilder::new(config).start()
    }

    /// Read `--tls-cert` and `--tls-key` again (what SIGHUP does): new
    /// handshakes present the new certificate, established connections are
    /// untouched. On error the current pair stays in use. `Ok(false)`: the
    /// server has no TLS.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::CertError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// The delivery API.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The address the shards listen on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The private `--metrics-listen` address (the real port when 0 was
    /// asked), if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The I/O back end in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Drain and stop: `/ready` answers 503 at once; connections are still
    /// accepted for `drain_delay`; then every client is closed with 1001
    /// after what is queued for it, spread evenly over `drain_spread`;
    /// the shards wait for them (at most `drain_spread` +
    /// `shutdown_timeout`) and every thread stops.
    pub fn shutdown(mut self) {
        self.handle
            .inner
            .registry
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !self.drain_delay.is_zero() {
            tracing::info!(
                delay_ms = self.drain_delay.as_millis() as u64,
                "draining: /ready answers 503; still accepting until the delay ends"
            );
            std::thread::sleep(self.drain_delay);
        }
        for tx in &self.handle.inner.shards {
            let _ = tx.send(ShardCommand::Shutdown);
        }
        self.join();
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = self.control.take() {
            c.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            for tx in &self.handle.inner.shards {
                let _ = tx.send(ShardCommand::Shutdown);
            }
            self.join();
        }
    }
}

/// Raise the soft fd limit to the hard limit; return the limit in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum
        && lim.current != Some(max)
    {
        lim.current = Some(max);
        if setrlimit(Resource::Nofile, lim).is_err() {
            return getrlimit(Resource::Nofile).current.unwrap_or(1024);
        }
    }
    lim.current.unwrap_or(1 << 20)
}

/// One listening socket per shard on the same address (SO_REUSEPORT lets
/// the kernel spread connections over them). With port 0 the first socket
/// picks the port and the others join it.
fn bind_all(addr: SocketAddr, n: usize, defer_secs: Option<u64>) -> Result<Vec<Socket>, Error> {
    let mut out: Vec<Socket> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let listen_err = |source| Error::Listen { addr, source };
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(listen_err)?;
        s.set_reuse_address(true).map_err(listen_err)?;
        s.set_reuse_port(true).map_err(listen_err)?;
        s.set_nonblocking(true).map_err(listen_err)?;
        // Inherited by every accepted socket: no setsockopt per connection.
        s.set_tcp_nodelay(true).map_err(listen_err)?;
        if let Some(secs) = defer_secs {
            set_defer_accept(&s, secs).map_err(listen_err)?;
        }
        s.bind(&addr.into()).map_err(listen_err)?;
        s.listen(4096).map_err(listen_err)?;
        if addr.port() == 0
            && let Some(a) = s.local_addr().ok().and_then(|a| a.as_socket())
        {
            addr = a;
        }
        out.push(s);
    }
    Ok(out)
}

/// `--defer-accept`: the listener hands over a connection once data
/// arrived on it, or after about `secs` seconds (the kernel counts them
/// in SYN-ACK retransmissions).
#[allow(unsafe_code)]
fn set_defer_accept(s: &Socket, secs: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = secs.min(i32::MAX as u64) as libc::c_int;
    // SAFETY: `s` is an open socket for the whole call, and the option
    // value is a live `c_int` whose size is the length passed (exercised
    // by `listener_tests::defer_accept_hands_over_a_connection_with_its_request`).
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(clippy::too_many_arguments)] // reason: a thread entry point taking what it owns
fn run_shard(
    ctx: ShardCtx,
    calls: Calls,
    admission: Arc<crate::io::accept::Admission>,
    backend: Backend,
    core: Option<usize>,
    listener: Socket,
    rx: flume::Receiver<ShardCommand>,
    registry: Arc<Registry>,
    handle: Handle,
    interest: Option<flume::Sender<crate::bridge::interest::BridgeInput>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let index = ctx.index;
    let shutdown_timeout = ctx.config.shutdown_timeout + ctx.config.drain_spread;
    let encryption_on = ctx.config.encryption != crate::config::EncryptionMode::Off;
    let rt = match driver::build_runtime(backend, core) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {index}: {e}")));
            return;
        }
    };
    // Every line logged on this thread names its shard (a `shard` span:
    // `shard{shard=N}:` in text, `span`/`spans` in JSON).
    let _span = tracing::info_span!("shard", shard = index).entered();
    // A panic here is a bug in ignis-ws; a shard that silently stopped
    // would strand its clients, so the process stops loudly instead.
    let run = std::panic::AssertUnwindSafe(|| {
        rt.block_on(async move {
            let mut shard = Shard::new(ctx, Instant::now());
            if interest.is_some() {
                // Clients are reported only when they have channels of
                // their own (no tag pattern).
                let clients = shard.ctx.client_tag.is_none();
                shard.track_interest(clients);
            }
            let io = match ShardIo::new(shard, calls, admission, registry, handle, interest) {
                Ok(io) => io,
                Err(e) => {
                    let _ = ready.send(Err(format!("shard {index}: epoll_create: {e}")));
                    return;
                }
            };
            let accept = match compio::runtime::fd::PollFd::new(listener) {
                Ok(l) => compio::runtime::spawn(accept::accept_loop(io.clone(), l)),
                Err(e) => {
                    let _ = ready.send(Err(format!("shard {index}: {e}")));
                    return;
                }
            };
            compio::runtime::spawn(tasks::flusher(io.clone())).detach();
            compio::runtime::spawn(tasks::ticker(io.clone())).detach();
            compio::runtime::spawn(parked::poller(io.clone())).detach();
            if encryption_on {
                compio::runtime::spawn(tasks::encryptor(io.clone())).detach();
            }
            compio::runtime::spawn(tasks::commands(io.clone(), rx)).detach();
            if io.reports_interest() {
                compio::runtime::spawn(tasks::reporter(io.clone())).detach();
            }
            let _ = ready.send(Ok(()));
            io.shutting_down().await;
            // Stop accepting; the listener closes with the task.
            let _ = accept.cancel().await;
            let deadline = Instant::now() + shutdown_timeout;
            while !io.shard.borrow().is_empty() && Instant::now() < deadline {
                compio::time::sleep(Duration::from_millis(5)).await;
            }
            tracing::debug!(
                shard = index,
                left = io.shard.borrow().len(),
                "shard stopped"
            );
        })
    });
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!(shard = index, "shard panicked; aborting the process");
        std::process::abort();
    }
}

pub use crate::mem::release_free_memory;

#[cfg(test)]
mod listener_tests {
    /// `bind_all` sets TCP_NODELAY on the listener only: accepted sockets
    /// must inherit it (Linux copies it), or small frames would wait for
    /// Nagle.
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let ls = super::bind_all("127.0.0.1:0".parse().unwrap(), 1, None).unwrap();
        let addr = ls[0].local_addr().unwrap().as_socket().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        ls[0].set_nonblocking(false).unwrap();
        let (s, _) = ls[0].accept().unwrap();
        assert!(s.tcp_nodelay().unwrap());
    }

    /// `--defer-accept`: a connected client that has sent nothing is not
    /// handed over; once its request is there, the accepted socket has it.
    #[test]
    fn defer_accept_hands_over_a_connection_with_its_request() {
        use std::io::{Read, Write};
        let ls = super::bind_all("127.0.0.1:0".parse().unwrap(), 1, Some(5)).unwrap();
        let addr = ls[0].local_addr().unwrap().as_socket().unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // Connected on the client's side, but not acceptable yet.
        let early = ls[0].accept();
        assert!(
            early
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "accepted before any data: {early:?}"
        );
        c.write_all(b"GET /ws HTTP/1.1\r\n\r\n").unwrap();
        ls[0].set_nonblocking(false).unwrap();
        let (s, _) = ls[0].accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let n = (&s).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET /ws HTTP/1.1\r\n\r\n");
    }
}
