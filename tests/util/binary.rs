//! The real `ignis-ws` binary as a child process, for tests that read its
//! memory (`/proc/PID/status`) or need its CLI.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ignis-ws");

/// The real `ignis-ws` binary as a child process; killed if the test
/// fails before shutting it down.
pub struct Binary {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Every line the server logged after its `listening` line.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn spawn(args: &[&str]) -> Binary {
        Binary::spawn_with(None, args)
    }

    /// Like [`Binary::spawn`], with the file-descriptor limit (soft and
    /// hard) set to `nofile` first when given.
    pub fn spawn_with(nofile: Option<u32>, args: &[&str]) -> Binary {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, _) in std::env::vars() {
            if k.starts_with("IGNIS_WS_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn ignis-ws");
        let stdout = child.stdout.take().unwrap();
        // Owned from here: killed and reaped on drop if start-up fails.
        let mut srv = Binary {
            pid: child.id(),
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: Default::default(),
        };
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("the server logs its address").unwrap();
            if line.contains("listening") {
                srv.addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr= in the listening line")
                    .parse()
                    .unwrap();
                // Keep draining the log so the server never blocks on it.
                let log = srv.log.clone();
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        log.lock().unwrap().push(line);
                    }
                });
                return srv;
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Open file descriptors of the server process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Logged lines (after `listening`) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Resident set size of the server process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// SIGTERM, then the exit status must be success.
    pub async fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let mut child = self.child.take().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident set size of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmRSS in /proc/<pid>/status")
}

/// RSS of `pid` sampled for up to `max`: the lowest seen, or the first at
/// or below `target`.
pub async fn rss_settle(pid: u32, max: std::time::Duration, target: Option<u64>) -> u64 {
    let deadline = std::time::Instant::now() + max;
    let mut low = rss_kib(pid);
    loop {
        if target.is_some_and(|t| low <= t) || std::time::Instant::now() >= deadline {
            return low;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        low = low.min(rss_kib(pid));
    }
}
