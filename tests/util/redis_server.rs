//! Real `redis-server` processes for the tests, each on its own free port
//! (never the machine's shared 6379). Where redis-server is not installed
//! the tests skip with a printed reason, except under `CI=true`, where they
//! must run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    _dir: Option<std::sync::Arc<tempfile::TempDir>>,
    tls: bool,
}

/// Whether redis-server can be run; prints why not and panics in CI.
pub fn available() -> bool {
    match Command::new("redis-server").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the Redis tests: redis-server is not installed"
            );
            eprintln!("SKIPPED: redis-server not installed");
            false
        }
    }
}

/// A port for a cluster node: it and its cluster-bus port (+10000) are
/// free and valid.
pub fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
        // An ephemeral port above the range: pick one below it.
        for q in (20_000..30_000).step_by(97) {
            let q = q + (p % 97);
            if std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", q + 10_000)).is_ok()
            {
                return q;
            }
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Arguments that keep a test server off the disk: no snapshots, no AOF,
/// logs to stdout (where [`spawn`] awaits "ready").
const EPHEMERAL: [&str; 6] = ["--save", "", "--appendonly", "no", "--logfile", ""];

fn spawn(args: &[String]) -> Child {
    spawn_until(args, "Ready to accept connections")
}

/// Start redis-server and wait for a line containing `ready`.
fn spawn_until(args: &[String], ready: &'static str) -> Child {
    let mut child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    // Wait for the server's own "ready" line: an event, not a guess.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains(ready)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("redis-server ready in time");
    child
}

impl RedisServer {
    /// A plain redis-server on a free port; `None` (skip) if not installed.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// With extra arguments (e.g. `--requirepass`, ACL users).
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        Self::start_full(free_port(), extra)
    }

    /// On a given port.
    pub fn start_on(port: u16) -> Option<RedisServer> {
        Self::start_full(port, &[])
    }

    fn start_full(port: u16, extra: &[&str]) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .chain(&EPHEMERAL)
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        let child = spawn(&args);
        Some(RedisServer {
            child: Some(child),
            port,
            args,
            _dir: None,
            tls: false,
        })
    }

    /// A TLS-only redis-server with a fresh self-signed certificate.
    /// `None` if redis-server or openssl is missing (skip).
    pub fn start_tls() -> Option<(RedisServer, PathBuf)> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let (ca_key, ca, key, csr, cert, ext) = (
            p("ca.key"),
            p("ca.pem"),
            p("key.pem"),
            p("server.csr"),
            p("cert.pem"),
            p("ext.cnf"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        // A private CA, and a server certificate it signs for 127.0.0.1.
        let steps: [Vec<&str>; 3] = [
            vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=ignis-ws test CA",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ],
            vec![
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        ];
        let ok = steps.iter().all(|args| {
            Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs openssl for the TLS test"
            );
            eprintln!("SKIPPED: openssl not available to make a test certificate");
            return None;
        }
        let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
        let ca_path = PathBuf::from(&ca);
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_path.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(EPHEMERAL.map(String::from));
        let child = spawn(&args);
        let dir = std::sync::Arc::new(dir);
        Some((
            RedisServer {
                child: Some(child),
                port,
                args,
                _dir: Some(dir),
                tls: true,
            },
            ca_path,
        ))
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Freeze or thaw the server (SIGSTOP / SIGCONT): a silent partition,
    /// no FIN, no RST, its sockets open but nothing answered.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} redis-server");
        }
    }

    /// Kill the server (SIGKILL: as abrupt as a crash) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(&self.args));
    }

    /// An emitter on this server.
    pub async fn emitter(&self) -> ignis_ws::bridge::emitter::Emitter {
        ignis_ws::bridge::emitter::Emitter::connect(&self.url())
            .await
            .unwrap()
    }

    /// Wait until `channel` has at least `n` subscribers (`PUBSUB
    /// NUMSUB`): nodes subscribe on demand, a round trip after their
    /// client joined.
    pub async fn wait_subscribers(&self, channel: &str, n: i64) {
        let mut r = self.client().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, count): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut r)
                .await
                .unwrap();
            if count >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: {count} subscribers, want {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Every channel with a subscriber (`PUBSUB CHANNELS`), sorted.
    pub async fn channels(&self) -> Vec<String> {
        let mut r = self.client().await;
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut r)
            .await
            .unwrap();
        v.sort();
        v
    }

    /// A plain (test-side) connection.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl RedisCluster {
    pub fn start() -> Option<RedisCluster> {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (`nodes[..3]` are the
    /// masters as `redis-cli --cluster create` assigns them).
    pub fn start_with_replicas(replicas: usize) -> Option<RedisCluster> {
        if !available() {
            return None;
        }
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = free_cluster_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
            ];
            args.extend(EPHEMERAL.map(String::from));
            args.extend(["--dir".into(), dir.path().display().to_string()]);
            let child = spawn(&args);
            nodes.push(RedisServer {
                child: Some(child),
                port,
                args,
                _dir: Some(dir.clone()),
                tls: false,
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("All 16384 slots covered"),
            "cluster create failed: {text}"
        );
        Some(RedisCluster { nodes, _dir: dir })
    }

    /// Wait until every node reports `cluster_state:ok` (cluster gossip
    /// is what we wait for; there is no event to subscribe to).
    pub async fn wait_ok(&self) {
        for n in &self.nodes {
            let mut c = n.client().await;
            for _ in 0..200 {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A master, its replica and one Sentinel watching them (`mymaster`,
/// quorum 1, down after 1 s), each on a free port.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinel: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> Option<RedisSentinel> {
        let master = RedisServer::start()?;
        let mport = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &mport])?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor mymaster 127.0.0.1 {mport} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 2000\n"
            ),
        )
        .unwrap();
        let args = vec![
            conf.display().to_string(),
            "--sentinel".into(),
            "--logfile".into(),
            String::new(),
        ];
        let sentinel = spawn_until(&args, "+monitor master");
        Some(RedisSentinel {
            master,
            replica,
            sentinel: Some(sentinel),
            port,
            _dir: dir,
        })
    }

    /// `host:port` of the Sentinel.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{}", self.addr()))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The port Sentinel names as the master now.
    pub async fn master_port(&self) -> u16 {
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("mymaster")
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        port.parse().unwrap()
    }

    /// Poll Sentinel (it has no event for this) until `f` holds.
    async fn poll(&self, what: &str, f: impl AsyncFn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until Sentinel knows the replica and sees it in sync (it learns
    /// replicas from the master's INFO, every few seconds).
    pub async fn wait_replica_known(&self) {
        self.poll("sentinel knows the replica", async |s| {
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("mymaster")
                .query_async(&mut s.conn().await)
                .await
                .unwrap();
            replicas.iter().any(|r| {
                r.get("port").map(String::as_str) == Some(&s.replica.port.to_string())
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            })
        })
        .await;
    }

    /// `SENTINEL FAILOVER mymaster`, then until Sentinel names `port`.
    pub async fn failover_to(&self, port: u16) {
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("mymaster")
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        self.wait_master(port).await;
    }

    /// Until Sentinel names `port` as the master.
    pub async fn wait_master(&self, port: u16) {
        self.poll("the new master", async |s| s.master_port().await == port)
            .await;
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.sentinel.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
