//! A redis-server of a unit test's own, on a free port, for the tests of
//! the [`super::emitter`] and the bench's Redis publishing. Without
//! redis-server installed a test skips, except in CI (where `.ci/run`
//! installs it) where it fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether redis-server can run here; prints why a test skips when not.
pub(crate) fn redis_server_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the Redis tests: redis-server is not installed"
        );
        println!("SKIPPED: redis-server not installed");
    }
    found
}

/// A TCP port nothing listens on (as of now).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A redis-server of our own, killed on drop.
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
}

impl Redis {
    /// `None` when redis-server is not installed (the test skips).
    pub(crate) fn start(extra: &[&str]) -> Option<Redis> {
        Self::start_on(extra, |port| vec!["--port".into(), port.to_string()])
    }

    /// `port_args` maps the free port chosen to the listening arguments.
    pub(crate) fn start_on(
        extra: &[&str],
        port_args: impl Fn(u16) -> Vec<String>,
    ) -> Option<Redis> {
        if !redis_server_installed() {
            return None;
        }
        // A free port can be taken between our probe and the server's
        // bind; the server then exits before it is ready, and we retry.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(port_args(port))
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            // Keep draining after the ready line so the server never
            // blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("Ready to accept connections") {
                        let _ = tx.send(());
                    }
                }
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(()) => return Some(Redis { child, port }),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("redis-server did not become ready");
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
