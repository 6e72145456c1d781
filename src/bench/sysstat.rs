//! Owns reading other processes' resource use from /proc: CPU time
//! (utime + stime of /proc/PID/stat, in clock ticks) and resident memory
//! (VmRSS and RssAnon of /proc/PID/status). Used for the server processes
//! (`--server-pid`) and for the generator's own processes.
//!
//! /proc is read rather than getrusage because the workers are alive while
//! publishing: RUSAGE_CHILDREN only counts children that have been waited
//! for, so it would miss exactly the interval we care about.

use std::fs;

/// A /proc file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot read /proc/{pid}/{file}: {source}")]
    Read {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse /proc/{pid}/{file}")]
    Parse { pid: u32, file: &'static str },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// RssAnon, bytes: the resident part of VmRSS that is the process's
    /// own memory (heap, stacks, anonymous maps), without the pages of its
    /// binary and libraries that running new code paths reads in. `None`
    /// where the kernel does not report it (before Linux 4.5).
    pub anon_bytes: Option<u64>,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// Reads /proc/`pid`/`file` and parses it with `parse`.
fn read<T>(pid: u32, file: &'static str, parse: impl Fn(&str) -> Option<T>) -> Result<T, SysError> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|source| SysError::Read { pid, file, source })?;
    parse(&text).ok_or(SysError::Parse { pid, file })
}

/// Reads CPU and RSS of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, SysError> {
    let (rss_bytes, anon_bytes) = read(pid, "status", |s| {
        Some((parse_status_rss(s)?, parse_status_kb(s, "RssAnon:")))
    })?;
    Ok(ProcSample {
        cpu_ticks: read(pid, "stat", parse_stat_cpu)?,
        rss_bytes,
        anon_bytes,
    })
}

/// Sum of the readings of several processes.
pub fn sample_all(pids: &[u32]) -> Result<ProcSample, SysError> {
    let mut total = ProcSample {
        anon_bytes: Some(0),
        ..ProcSample::default()
    };
    for &pid in pids {
        let s = sample(pid)?;
        total.cpu_ticks += s.cpu_ticks;
        total.rss_bytes += s.rss_bytes;
        total.anon_bytes = total.anon_bytes.zip(s.anon_bytes).map(|(a, b)| a + b);
    }
    Ok(total)
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted from the last
/// `)`: field 3 (state) is the first after it, utime and stime are fields 14
/// and 15.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS (kB in the file) in bytes. A kernel thread has no VmRSS: 0.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    match parse_status_kb(status, "VmRSS:") {
        Some(b) => Some(b),
        None if status.lines().any(|l| l.starts_with("VmRSS:")) => None,
        None => status.contains("Name:").then_some(0),
    }
}

/// A `Key:  N kB` line of /proc/PID/status, in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix(key))?;
    let kb: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0 5 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(267));
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t   2048 kB\nThreads: 1\n";
        assert_eq!(parse_status_rss(s), Some(2048 * 1024));
        assert_eq!(parse_status_rss("Name:\tkthreadd\nThreads: 1\n"), Some(0));
        assert_eq!(parse_status_rss("VmRSS: lots"), None);
        let s = "Name:\tx\nVmRSS:\t   2048 kB\nRssAnon:\t    512 kB\nRssFile:\t   1536 kB\n";
        assert_eq!(parse_status_kb(s, "RssAnon:"), Some(512 * 1024));
        assert_eq!(parse_status_kb(s, "RssShmem:"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(ticks_per_second() >= 1);
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn several_processes_are_summed() {
        // Two idle children (nginx's master and worker, say): their CPU
        // stays put and so does their RSS, so the sum is exact.
        let mut kids: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let pids: Vec<u32> = kids.iter().map(std::process::Child::id).collect();
        // Wait until both have exec'd sleep (RSS settled).
        for &p in &pids {
            for _ in 0..100 {
                if std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // A child that just exec'd may still be mapping pages: read until
        // two readings in a row agree (they do within milliseconds).
        let mut got = None;
        for _ in 0..200 {
            let each: Vec<ProcSample> = pids.iter().map(|&p| sample(p).unwrap()).collect();
            let all = sample_all(&pids).unwrap();
            let again: Vec<ProcSample> = pids.iter().map(|&p| sample(p).unwrap()).collect();
            if each == again {
                got = Some((each, all));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (each, all) = got.expect("the children settle");
        assert_eq!(all.rss_bytes, each[0].rss_bytes + each[1].rss_bytes);
        assert_eq!(all.cpu_ticks, each[0].cpu_ticks + each[1].cpu_ticks);
        assert!(all.rss_bytes > each[0].rss_bytes);
        let anon = |s: &ProcSample| s.anon_bytes.expect("RssAnon (Linux 4.5+)");
        assert_eq!(anon(&all), anon(&each[0]) + anon(&each[1]));
        assert_eq!(
            sample_all(&[]).unwrap(),
            ProcSample {
                anon_bytes: Some(0),
                ..ProcSample::default()
            }
        );
        // One vanished process fails the reading rather than under-count.
        assert!(sample_all(&[pids[0], u32::MAX]).is_err());
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}
