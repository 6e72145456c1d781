//! Owns the *shape* of what the server wrote during the measured phase:
//! not how much CPU it took but how the bytes went out, the figures that
//! explain a CPU figure (issue 16: at the same CPU per byte, a server that
//! sends each client ten frames per `sendmsg` costs both ends far less than
//! one that sends one).
//!
//! Three sources, each optional, read before the measured phase and after
//! the drain:
//!
//! - **The kernel's TCP counters** (`/proc/net/snmp`, `Tcp: OutSegs` and
//!   `InSegs`): host-wide, so they include the clients' ACKs and the Redis
//!   traffic of the run; on a quiet machine they are the run's.
//! - **ignis-ws's `/metrics`** (`--metrics-url`): `write_calls_total`,
//!   `bytes_written_total` and `messages_out_total`, the server's own count
//!   of its socket writes and of the frames and bytes in them.
//! - **`perf stat`** on the server processes (`--count-syscalls`): the
//!   write-family system calls of any server (Bun, the floor), counted by the
//!   kernel's syscall tracepoints.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::args::HttpTarget;

/// The write-family system calls `--count-syscalls` counts.
pub const WRITE_SYSCALLS: [&str; 6] = [
    "write", "writev", "sendto", "sendmsg", "sendmmsg", "pwritev",
];

/// The host's TCP segment counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segments {
    pub out_segs: u64,
    pub in_segs: u64,
}

/// Reads `Tcp: OutSegs` and `InSegs` from `/proc/net/snmp`.
pub fn segments() -> Option<Segments> {
    parse_snmp(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// Parses the two `Tcp:` lines (names, then values) of `/proc/net/snmp`.
pub fn parse_snmp(text: &str) -> Option<Segments> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let mut out = None;
    let mut inn = None;
    for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
        match n {
            "OutSegs" => out = v.parse().ok(),
            "InSegs" => inn = v.parse().ok(),
            _ => {}
        }
    }
    Some(Segments {
        out_segs: out?,
        in_segs: inn?,
    })
}

/// ignis-ws's write counters, summed over every label set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounters {
    pub write_calls: u64,
    pub bytes_written: u64,
    pub messages_out: u64,
}

/// Largest /metrics response read (a node's metrics are a few KiB).
const MAX_METRICS: usize = 4 << 20;
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `/metrics` and sums the three counters; an error says why.
pub fn scrape(t: &HttpTarget) -> Result<WriteCounters, String> {
    let mut s = TcpStream::connect_timeout(&t.addr, METRICS_TIMEOUT)
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    s.set_read_timeout(Some(METRICS_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(METRICS_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.path, t.host
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut body = Vec::new();
    s.take(MAX_METRICS as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("read: {e}"))?;
    if body.len() > MAX_METRICS {
        return Err(format!("response larger than {MAX_METRICS} bytes"));
    }
    let text = String::from_utf8_lossy(&body);
    let status = text.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(format!("answered {status:?}"));
    }
    parse_metrics(&text).ok_or_else(|| {
        "no ignis_ws_write_calls_total in the response (is it an ignis-ws /metrics?)".into()
    })
}

/// Sums `ignis_ws_{write_calls,bytes_written,messages_out}_total` over
/// their label sets; None when `write_calls_total` is absent.
pub fn parse_metrics(text: &str) -> Option<WriteCounters> {
    let mut c = WriteCounters::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name).trim();
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = v as u64;
        match name {
            "ignis_ws_write_calls_total" => {
                c.write_calls += v;
                seen = true;
            }
            "ignis_ws_bytes_written_total" => c.bytes_written += v,
            "ignis_ws_messages_out_total" => c.messages_out += v,
            _ => {}
        }
    }
    seen.then_some(c)
}

/// A running `perf stat` counting the write-family system calls of the
/// server processes.
#[derive(Debug)]
pub struct SyscallCount {
    child: Child,
    out: PathBuf,
}

impl SyscallCount {
    /// Starts `perf stat` on `pids`; an error says why it could not.
    pub fn start(pids: &[u32]) -> Result<SyscallCount, String> {
        let out = std::env::temp_dir().join(format!(
            "ignis-ws-bench-perf-{}-{}.csv",
            std::process::id(),
            super::payload::now_ns()
        ));
        let events: Vec<String> = WRITE_SYSCALLS
            .iter()
            .map(|s| format!("syscalls:sys_enter_{s}"))
            .collect();
        let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut child = Command::new("perf")
            .args(["stat", "-x", ",", "--no-big-num", "-o"])
            .arg(&out)
            .arg("-e")
            .arg(events.join(","))
            .arg("-p")
            .arg(pid_list.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"))?;
        // perf exits at once when it may not trace or an event is unknown.
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = std::fs::remove_file(&out);
            return Err(format!(
                "perf stat exited ({status}): {}",
                err.lines().next().unwrap_or("no message")
            ));
        }
        Ok(SyscallCount { child, out })
    }

    /// Stops perf (SIGINT makes it print its counts) and sums them.
    pub fn stop(mut self) -> Result<u64, String> {
        // Our own child, not yet waited for: its pid cannot have been reused.
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or("perf has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)
            .map_err(|e| format!("cannot stop perf: {e}"))?;
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).map_err(|e| format!("perf output: {e}"));
        let _ = std::fs::remove_file(&self.out);
        parse_perf_csv(&text?).ok_or_else(|| "perf stat printed no counts".into())
    }
}

impl Drop for SyscallCount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Sums the counts of `perf stat -x ,` output (`count,unit,event,...`);
/// None when no line has a count.
pub fn parse_perf_csv(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(',');
        let (Some(count), Some(_unit), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !event.starts_with("syscalls:") {
            continue;
        }
        // perf says `<not counted>` for an event that never ran (the
        // process slept throughout): none of those calls happened.
        match count.trim() {
            "<not counted>" => seen = true,
            c => {
                if let Ok(n) = c.parse::<u64>() {
                    total += n;
                    seen = true;
                }
            }
        }
    }
    seen.then_some(total)
}

/// One reading of every source that was asked for (and answered).
#[derive(Debug, Clone, Default)]
pub struct ShapeSample {
    pub segments: Option<Segments>,
    pub metrics: Option<Result<WriteCounters, String>>,
}

/// Reads the sources: the kernel's counters always, `/metrics` if given.
pub fn sample(metrics: Option<&HttpTarget>) -> ShapeSample {
    ShapeSample {
        segments: segments(),
        metrics: metrics.map(scrape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin ActiveOpens InSegs OutSegs RetransSegs\n\
            Tcp: 1 200 5 1234 5678 0\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(
            parse_snmp(text),
            Some(Segments {
                out_segs: 5678,
                in_segs: 1234
            })
        );
        assert_eq!(parse_snmp("Tcp: InSegs\n"), None);
        assert_eq!(parse_snmp("Tcp: Foo\nTcp: 1\n"), None);
        // The real file parses on Linux.
        assert!(segments().is_some());
    }

    #[test]
    fn metrics() {
        let text = "# HELP ignis_ws_write_calls_total Socket writes.\n\
            # TYPE ignis_ws_write_calls_total counter\n\
            ignis_ws_write_calls_total{shard=\"0\"} 10\n\
            ignis_ws_write_calls_total{shard=\"1\"} 5\n\
            ignis_ws_bytes_written_total 1500\n\
            ignis_ws_messages_out_total 300\n\
            ignis_ws_write_calls_totally 99\n\
            garbage\n";
        assert_eq!(
            parse_metrics(text),
            Some(WriteCounters {
                write_calls: 15,
                bytes_written: 1500,
                messages_out: 300
            })
        );
        assert_eq!(parse_metrics("ignis_ws_bytes_written_total 1\n"), None);
    }

    #[test]
    fn perf_csv() {
        let text = "# started on Mon Dec  7 11:00:00 2026\n\n\
            10000,,syscalls:sys_enter_sendmsg,1200,100.00,,\n\
            12,,syscalls:sys_enter_write,1200,100.00,,\n\
            <not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n";
        assert_eq!(parse_perf_csv(text), Some(10_012));
        assert_eq!(
            parse_perf_csv("<not counted>,,syscalls:sys_enter_write,0,100.00,,\n"),
            Some(0)
        );
        assert_eq!(
            parse_perf_csv("<not supported>,,syscalls:sys_enter_write,0,100.00,,\n"),
            None
        );
        assert_eq!(parse_perf_csv("# nothing\n"), None);
    }
}
