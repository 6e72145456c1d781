//! Owns the human table of a [`Report`]: one row per section, figures in
//! readable units (k/M, µs/ms/s, B/KiB/MiB/GiB). `--json` skips it and
//! prints the report as is.

use std::fmt::Write as _;

use super::{Report, ServerFigures};

/// `v` divided by the divisor of the first of `units` (threshold,
/// divisor, decimals, suffix) whose threshold `size` reaches, else as is
/// with `plain` (decimals, suffix).
fn scaled(v: f64, size: f64, units: &[(f64, f64, usize, &str)], plain: (usize, &str)) -> String {
    let (div, decimals, suffix) = units
        .iter()
        .find(|u| size >= u.0)
        .map_or((1.0, plain.0, plain.1), |u| (u.1, u.2, u.3));
    format!("{:.decimals$}{suffix}", v / div)
}

/// A count with k/M (the unit follows).
fn si(v: f64) -> String {
    scaled(v, v, &[(1e6, 1e6, 2, " M"), (1e4, 1e3, 1, " k")], (1, " "))
}

/// Microseconds, in µs, ms or s.
fn us(v: f64) -> String {
    scaled(
        v,
        v,
        &[(1e6, 1e6, 2, " s"), (1e3, 1e3, 2, " ms")],
        (0, " µs"),
    )
}

/// Bytes, in B, KiB (from 10 KiB), MiB or GiB.
fn bytes(v: f64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * KIB;
    const GIB: f64 = MIB * KIB;
    let units = [
        (GIB, GIB, 2, " GiB"),
        (MIB, MIB, 1, " MiB"),
        (10.0 * KIB, KIB, 1, " KiB"),
    ];
    scaled(v, v.abs(), &units, (0, " B"))
}

fn rss_row(s: &ServerFigures) -> String {
    format!(
        "{} before → {} idle → {} after: {} per idle connection{}",
        bytes(s.rss_before_bytes as f64),
        bytes(s.rss_idle_bytes as f64),
        bytes(s.rss_after_bytes as f64),
        bytes(s.idle_rss_per_connection_bytes),
        match s.idle_anon_per_connection_bytes {
            Some(a) => format!(" ({} anonymous: without code pages)", bytes(a)),
            None => String::new(),
        }
    )
}

impl Report {
    /// The human table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let c = &self.config;
        let pace = match (c.rate_per_s, c.flood_window) {
            (Some(r), _) => format!("rate {r}/s"),
            (None, Some(w)) => format!("flood (window {w})"),
            (None, None) => match (c.burst_size, c.burst_every_s) {
                (Some(n), Some(t)) => format!(
                    "a burst of {n} every {t} s (pipelines of {})",
                    c.burst_pipeline.unwrap_or(0)
                ),
                (Some(n), None) => format!(
                    "one burst of {n} (pipelines of {})",
                    c.burst_pipeline.unwrap_or(0)
                ),
                _ => c.mode.clone(),
            },
        };
        let one_burst = c.burst_size.is_some() && c.burst_every_s.is_none();
        let target = if c.target == "room" {
            format!("room {:?}", c.room)
        } else {
            "broadcast".into()
        };
        let what = if c.connect_only {
            "connect only".to_owned()
        } else {
            format!(
                "{} → {} · {}{}{} · payload {} B",
                c.publish,
                target,
                pace,
                if one_burst {
                    String::new()
                } else {
                    format!(" for {} s", c.duration_s)
                },
                if c.warmup_s > 0.0 {
                    format!(" (+{} s warmup)", c.warmup_s)
                } else {
                    String::new()
                },
                c.payload_size_bytes
            )
        };
        let _ = writeln!(
            o,
            "ignis-ws bench: {}{} · {} connections ({} worker{}, {} source IP{}) · {what}",
            c.url,
            c.tls
                .as_ref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default(),
            c.connections,
            c.workers,
            if c.workers == 1 { "" } else { "s" },
            c.source_ips.max(1),
            if c.source_ips > 1 { "s" } else { "" },
        );
        let row = |o: &mut String, k: &str, v: String| {
            let _ = writeln!(o, "  {k:<12}{v}");
        };
        let k = &self.connect;
        row(
            &mut o,
            "connect",
            format!(
                "{} connected, {} failed in {:.2} s: {}conn/s",
                k.connected,
                k.failed,
                k.seconds,
                si(k.per_s)
            ),
        );
        row(
            &mut o,
            "",
            format!(
                "CPU: server {}, generator {:.2} s ({:.0}% of a core)",
                match (
                    k.server_cpu_s,
                    k.server_percent_of_core,
                    k.server_cpu_per_connection_us
                ) {
                    (Some(s), Some(p), Some(u)) =>
                        format!("{s:.2} s ({p:.0}% of a core, {u:.1} µs per connection)"),
                    _ => "not measured (no --server-pid)".into(),
                },
                k.generator_cpu_s,
                k.generator_percent_of_core
            ),
        );
        if c.connect_only {
            if let Some(s) = &self.server {
                row(&mut o, "server RSS", rss_row(s));
            }
            for n in &self.notes {
                let _ = writeln!(o, "  NOTE: {n}");
            }
            return o;
        }
        let p = &self.publish;
        let reach = match (p.redis_receivers_min, p.redis_receivers_max) {
            (Some(a), Some(b)) if a == b => format!("; each PUBLISH reached {a} server(s)"),
            (Some(a), Some(b)) => format!("; PUBLISH reached {a}–{b} servers"),
            _ => String::new(),
        };
        row(
            &mut o,
            "publish",
            format!(
                "{} messages in {:.2} s ({}msg/s), {} failed{}",
                p.published,
                p.seconds,
                si(p.per_s),
                p.failed,
                reach
            ),
        );
        let d = &self.delivery;
        row(
            &mut o,
            "delivery",
            format!(
                "expected {}, received {}, lost {} ({:.4}%)",
                d.expected, d.received, d.lost, d.loss_percent
            ),
        );
        row(
            &mut o,
            "",
            format!(
                "duplicates {}, reordered {}, gaps {}, disconnected {}, other messages {}",
                d.duplicates, d.reordered, d.gaps, d.disconnected, d.other_messages
            ),
        );
        if !d.close_codes.is_empty() || !d.errors.is_empty() {
            let mut ends: Vec<String> = d
                .close_codes
                .iter()
                .map(|(c, n)| format!("{n}× close {c}"))
                .collect();
            ends.extend(d.errors.iter().map(|(e, n)| format!("{n}× {e}")));
            row(&mut o, "", format!("ended: {}", ends.join(", ")));
        }
        row(
            &mut o,
            "drain",
            format!(
                "{:.2} s after publishing{}",
                d.drain_s,
                if d.drained {
                    ", everything arrived"
                } else {
                    ", timed out"
                }
            ),
        );
        let l = &self.latency_us;
        row(
            &mut o,
            "latency",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (min {}, mean {}, n={})",
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.p99_9),
                us(l.max),
                us(l.min),
                us(l.mean),
                l.count
            ),
        );
        let t = &self.throughput;
        row(
            &mut o,
            "throughput",
            format!(
                "{}{}deliveries/s overall ({:.2} s to the last)",
                if one_burst {
                    String::new()
                } else {
                    format!("{}deliveries/s while publishing; ", si(t.publishing_per_s))
                },
                si(t.overall_per_s),
                t.overall_s
            ),
        );
        if t.warmup_late > 0 {
            row(
                &mut o,
                "",
                format!(
                    "(counting {} deliveries of warmup messages that arrived after measuring began)",
                    t.warmup_late
                ),
            );
        }
        match &self.server {
            Some(s) => {
                row(&mut o, "server RSS", rss_row(s));
                row(
                    &mut o,
                    "server CPU",
                    format!(
                        "{:.2} s while publishing ({:.1}% of a core); {} per delivery ({:.2} s to the end of the drain)",
                        s.cpu_publishing_s,
                        s.cpu_publishing_percent_of_core,
                        s.cpu_per_delivery_us
                            .map_or_else(|| "n/a".into(), |v| format!("{v:.3} µs")),
                        s.cpu_delivery_s
                    ),
                );
            }
            None => row(&mut o, "server", "not measured (give --server-pid)".into()),
        }
        let g = &self.generator;
        let per: Vec<String> = g
            .processes
            .iter()
            .map(|p| format!("{} {:.1}%", p.role, p.percent_of_core))
            .collect();
        row(
            &mut o,
            "generator",
            format!(
                "{:.2} s CPU while publishing ({:.1}% of a core; {}), {} core(s) allowed",
                g.cpu_publishing_s,
                g.cpu_publishing_percent_of_core,
                per.join(", "),
                g.cores_allowed
            ),
        );
        let sh = &self.shape;
        let mut shape = Vec::new();
        if let (Some(f), Some(b), Some(w)) = (
            sh.frames_per_write,
            sh.bytes_per_write,
            sh.writes_per_delivery,
        ) {
            shape.push(format!(
                "{f:.1} frames, {} per write ({w:.3} writes per delivery)",
                bytes(b)
            ));
        }
        if let (Some(n), Some(per)) = (sh.write_syscalls, sh.write_syscalls_per_delivery) {
            shape.push(format!(
                "{n} write syscalls ({per:.3} per delivery{})",
                sh.delivered_bytes_per_syscall
                    .map_or_else(String::new, |b| format!(
                        ", {} delivered per call",
                        bytes(b)
                    ))
            ));
        }
        if let Some(per) = sh.tcp_out_segments_per_delivery {
            shape.push(format!("{per:.3} TCP segments out per delivery (host)"));
        }
        if let Some(g) = sh.generator_cpu_per_delivery_us {
            shape.push(format!("receiver (generator) {g:.3} µs CPU per delivery"));
        }
        if !shape.is_empty() {
            row(&mut o, "shape", shape.join("; "));
        }
        for n in &self.notes {
            let _ = writeln!(o, "  NOTE: {n}");
        }
        o
    }
}

#[cfg(test)]
pub(in crate::bench) mod tests {
    use super::*;

    /// The rows of every measured run's table (the end-to-end tests check
    /// them too).
    pub(in crate::bench) const MEASURED_ROWS: [&str; 7] = [
        "connect",
        "publish",
        "delivery",
        "latency",
        "throughput",
        "server CPU",
        "generator",
    ];

    #[test]
    fn renders_every_section_and_json_has_units() {
        let r = Report {
            server: Some(ServerFigures {
                cpu_per_delivery_us: Some(1.5),
                ..ServerFigures::default()
            }),
            notes: vec!["generator saturated".into()],
            ..Report::default()
        };
        let text = r.render();
        for k in MEASURED_ROWS
            .into_iter()
            .chain(["server RSS", "NOTE: generator saturated"])
        {
            assert!(text.contains(k), "{k} missing in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["latency_us"]["p99_9"].is_number());
        assert!(v["server"]["cpu_per_delivery_us"].is_number());
        let none = Report::default();
        assert!(none.render().contains("give --server-pid"));
        assert!(serde_json::to_value(&none).unwrap()["server"].is_null());
    }

    #[test]
    fn units() {
        assert_eq!(us(12.4), "12 µs");
        assert_eq!(us(2_500_000.0), "2.50 s");
        assert_eq!(si(12_345.0), "12.3 k");
        assert_eq!(si(999.0), "999.0 ");
        assert_eq!(bytes(5.0 * 1024.0 * 1024.0), "5.0 MiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.00 GiB");
        assert_eq!(us(1_500.0), "1.50 ms");
        assert_eq!(bytes(3_500.0), "3500 B");
        assert_eq!(bytes(-20_480.0), "-20.0 KiB");
        assert_eq!(si(1_234_567.0), "1.23 M");
    }
}
