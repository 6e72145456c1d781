#!/usr/bin/env python3
"""Turn the files of scripts/perf-matrix.sh into PERFORMANCE.md's tables.

    scripts/perf-table.py [perf-results]

Every figure printed is read from a run's own report; nothing is computed
except ratios between runs of the same sitting."""
import glob
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "perf-results"
runs = {}
for f in glob.glob(os.path.join(out, "*.txt")):
    t = open(f, encoding="utf-8").read()

    def g(p):
        m = re.search(p, t)
        return m.group(1) if m else None

    runs[os.path.basename(f)[:-4]] = dict(
        conn=g(r"in [\d.]+ s: ([\d.]+ k?conn/s)"),
        lost=g(r"lost (\d+)"),
        expected=g(r"expected (\d+)"),
        p50=g(r"p50 ([\d.]+ \S+)"),
        p99=g(r"p99 ([\d.]+ \S+)"),
        thr=g(r"throughput\s+([\d.]+ \S+) while publishing"),
        rss=g(r"(\d+) B per idle connection"),
        anon=g(r"per idle connection \((\d+) B anonymous"),
        cpu=g(r"([\d.]+) µs per delivery"),
        gen=g(r"generator\s+[\d.]+ s CPU while publishing \(([\d.]+)% of a core"),
        sat="GENERATOR SATURATED: it used" in t,
        conn_cpu=g(r"([\d.]+) µs per connection"),
        conn_srv=g(r"CPU: server [\d.]+ s \((\d+)% of a core"),
        conn_gen=g(r", generator [\d.]+ s \((\d+)% of a core\)"),
        overall=g(r"([\d.]+ \S+) overall"),
        fpw=g(r"shape\s+([\d.]+) frames,"),
        sysc=g(r"write syscalls \(([\d.]+) per delivery"),
        bpc=g(r"per delivery, ([\d.]+ \S+) delivered per call"),
        segs=g(r"([\d.]+) TCP segments out per delivery"),
        recv=g(r"receiver \(generator\) ([\d.]+) µs CPU per delivery"),
    )


def r(name, key, suffix=""):
    v = runs.get(name, {}).get(key)
    return f"{v}{suffix}" if v else "—"


def flood(name):
    x = runs.get(name)
    if not x or not x["thr"]:
        return "—"
    loss = "0 lost" if x["lost"] == "0" else f"{x['lost']} lost"
    sat = " (generator saturated)" if x["sat"] else ""
    return f"{x['thr'].replace('deliveries/s', '/s')}, {x['cpu']} µs, {loss}{sat}"


def num(name, key):
    v = runs.get(name, {}).get(key)
    if not v:
        return None
    m = re.match(r"([\d.]+)\s*(\S*)", v)
    f = float(m.group(1))
    unit = m.group(2)
    if unit.startswith("M"):
        f *= 1e6
    elif unit.startswith("k"):
        f *= 1e3
    elif unit == "s":
        f *= 1000  # latency in ms
    return f


print("### Per back end\n")
print("Flood cells: delivered messages/s while publishing, server CPU per delivery, loss.")
print("Fixed rate: 10 msg/s to each client at 1k/10k, 1 msg/s at 50k/100k.\n")
for be in ["uring", "epoll"]:
    print(f"**{ {'uring': 'io_uring (default readiness receive)', 'epoll': 'epoll'}[be] }**\n")
    print("| N | connect + auth | flood 100 B | flood 1 KiB | p50 / p99 at fixed rate | server CPU per delivery at fixed rate | idle memory per connection: anonymous (RSS) |")
    print("|---|---|---|---|---|---|---|")
    for n, rate in [("1k", "rate10"), ("10k", "rate10"), ("50k", "rate1"), ("100k", "rate1")]:
        fr = f"{be}-{n}-{rate}"
        print(
            f"| {n} | {r(fr, 'conn')} | {flood(f'{be}-{n}-flood-100B')} | {flood(f'{be}-{n}-flood-1KiB')} "
            f"| {r(fr, 'p50')} / {r(fr, 'p99')} | {r(fr, 'cpu', ' µs')} | {r(fr, 'anon', ' B')} ({r(fr, 'rss', ' B')}) |"
        )
    print()

print("### 10,000 clients, side by side\n")
cols = ["floor", "uring", "epoll", "bun"]
print("| figure | floor (examples/floor) | io_uring | epoll | Ignis on Bun | io_uring better than Bun by | io_uring ÷ floor |")
print("|---|---|---|---|---|---|---|")
for label, run, key, unit, better_low in [
    ("server CPU per delivery, flood 100 B", "10k-flood-100B", "cpu", " µs", True),
    ("server CPU per delivery, flood 1 KiB", "10k-flood-1KiB", "cpu", " µs", True),
    ("delivered/s without loss, flood 100 B", "10k-flood-100B", "thr", "", False),
    ("delivered/s without loss, flood 1 KiB", "10k-flood-1KiB", "thr", "", False),
    ("server CPU per delivery, 10 msg/s each", "10k-rate10", "cpu", " µs", True),
    ("p50 latency, 10 msg/s each", "10k-rate10", "p50", "", True),
    ("p99 latency, 10 msg/s each", "10k-rate10", "p99", "", True),
    ("idle memory per authenticated connection (anonymous RSS)", "10k-rate10", "anon", " B", True),
    ("idle RSS per authenticated connection (with code pages)", "10k-rate10", "rss", " B", True),
    ("connect + authenticate rate", "10k-rate10", "conn", "", False),
]:
    cells = []
    for c in cols:
        v = r(f"{c}-{run}", key, unit)
        if key == "thr" and runs.get(f"{c}-{run}", {}).get("sat"):
            v += " (generator saturated)"
        cells.append(v)
    a = num(f"uring-{run}", key)
    b = num(f"bun-{run}", key)
    # > 1: io_uring is better (less CPU, latency, memory; more throughput).
    ratio = (f"{b / a:.2f}×" if better_low else f"{a / b:.2f}×") if a and b else "—"
    f = num(f"floor-{run}", key)
    vs_floor = f"{a / f:.2f}×" if a and f and key not in ("rss", "anon") else "—"
    print(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {vs_floor} |")
print()

print("### Bursts, 10,000 clients: 300 messages at once every 4 s\n")
print("Three bursts measured per run (3,000,000 deliveries each), from publish start to the end of the drain.")
print("Receiver = the generator's own CPU per delivery (it reads, parses and checks every frame).\n")
print("| server | payload | round | server CPU per delivery | ÷ floor's best | receiver CPU per delivery | receiver ÷ floor's | write syscalls per delivery | delivered per write call | TCP segments out per delivery | p50 / p99 | delivered/s overall |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for size in ["1KiB", "100B"]:
    names = sorted(k for k in runs if re.match(rf"floor-10k-burst-{size}(-\d)?$", k))
    best = min((num(k, "cpu") for k in names if num(k, "cpu")), default=None)
    best_recv = min((num(k, "recv") for k in names if num(k, "recv")), default=None)
    for s, label in [("floor", "floor, 1024 iovecs"), ("floor64", "floor, 64 iovecs (before)"),
                     ("uring", "ignis-ws io_uring"), ("epoll", "ignis-ws epoll"), ("bun", "Ignis on Bun")]:
        for k in sorted(k for k in runs if re.match(rf"{s}-10k-burst-{size}(-\d)?$", k)):
            c, rc = num(k, "cpu"), num(k, "recv")
            rnd = k.rsplit("-", 1)[1] if k[-2] == "-" else "1"
            print(
                f"| {label} | {size.replace('KiB', ' KiB').replace('B', ' B') if size == '100B' else '1 KiB'} | {rnd} "
                f"| {r(k, 'cpu', ' µs')} | {f'{c / best:.2f}×' if c and best else '—'} "
                f"| {r(k, 'recv', ' µs')} | {f'{rc / best_recv:.2f}×' if rc and best_recv else '—'} "
                f"| {r(k, 'sysc')} | {r(k, 'bpc')} | {r(k, 'segs')} | {r(k, 'p50')} / {r(k, 'p99')} "
                f"| {r(k, 'overall').replace('deliveries/s', '/s')} |"
            )
print()

print("### Connect + authenticate, 10,000 clients, three interleaved rounds\n")
print("| server | connect + auth | server CPU per connection | server core busy | generator core busy |")
print("|---|---|---|---|---|")
for s, label in [("floor", "do-nothing floor (examples/floor)"),
                 ("floor0", "floor without TCP_DEFER_ACCEPT (FLOOR_DEFER_ACCEPT=0)"),
                 ("uring", "ignis-ws io_uring"),
                 ("epoll", "ignis-ws epoll"), ("bun", "Ignis on Bun")]:
    rs = [runs[k] for k in sorted(runs) if k.startswith(f"connect-{s}-")]
    if not rs:
        continue
    cell = lambda key, suf="": " / ".join(f"{x[key]}{suf}" if x[key] else "—" for x in rs)
    print(f"| {label} | {cell('conn')} | {cell('conn_cpu', ' µs')} | {cell('conn_srv', '%')} | {cell('conn_gen', '%')} |")
print()

print("### --write-coalesce-us, 10,000 clients × 50 msg/s (io_uring)\n")
print("| --write-coalesce-us | server CPU per delivery | p50 / p99 latency | connect + auth |")
print("|---|---|---|---|")
for us in ["0", "5000", "20000", "50000"]:
    n = f"uring-10k-rate50-coalesce{us}"
    print(f"| {us} | {r(n, 'cpu', ' µs')} | {r(n, 'p50')} / {r(n, 'p99')} | {r(n, 'conn')} |")
print()
gens = [(k, v["gen"]) for k, v in sorted(runs.items()) if v["gen"]]
sat = [k for k, v in sorted(runs.items()) if v["sat"]]
print(
    "Generator CPU while publishing ranged from "
    f"{min(float(g) for _, g in gens):.0f}% to {max(float(g) for _, g in gens):.0f}% of its core; "
    + (f"saturated in: {', '.join(sat)}." if sat else "it never saturated.")
)
