"""Turn bench/run's raw files into the markdown report.

Usage: summarize.py WORK_DIR MACHINE_MD DATE > report.md

WORK_DIR/raw holds the max step's `<run>-<body>-<proxy>.wrk` (wrk --latency
output) and `.meta` (cpu_ticks, hz, hwm_kb) per case. Every figure is the
median over runs; each ratio is taken against nginx within the same run and
body, then the median of those ratios is reported.

WORK_DIR/rates holds `nginx-max` (the req/s the rates are fractions of) and
`<percent>-<proxy>.json`, one line of loadgen output (or `{"skipped": true}`).
WORK_DIR/h2 holds `<body>-<proxy>.h2load` (h2load output, or `no-h2c`) and
`.meta` per case.
WORK_DIR/tls holds `keepalive-<proxy>.wrk`, `h2-<proxy>.h2load` and
`handshake-<proxy>.wrk`, each with its `.meta`; WORK_DIR/ws holds
`<proxy>.json` (ws-echo's line) and `.meta`.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PROXIES = ["wicket", "wicket-3", "wicket-3r", "wicket-3t", "wicket-5", "nginx", "haproxy"]
LABELS = {
    "wicket": "Wicket, no plugins",
    "wicket-3": "Wicket, 3 policies",
    "wicket-3r": "Wicket, 3 policies, state on Redis",
    "wicket-3t": "Wicket, 3 policies, every request traced",
    "wicket-5": "Wicket, 5 policies",
    "nginx": "nginx",
    "haproxy": "HAProxy",
}
UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def latency_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unreadable latency {text!r}")
    return float(m.group(1)) * UNITS_US[m.group(2)]


def parse_wrk(text: str) -> dict:
    out = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        out[f"p{pct}"] = latency_us(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
    return out


def parse_meta(text: str) -> dict:
    kv = dict(line.split("=", 1) for line in text.split() if "=" in line)
    return {k: int(v) for k, v in kv.items()}


def fmt_lat(us: float) -> str:
    if us >= 1_000_000:
        return f"{us / 1_000_000:.2f} s"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def parse_h2load(text: str) -> dict | None:
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text)
    if not m:
        return None
    out = {"rps": float(m.group(1))}
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", text)
    out["done"] = int(m.group(2)) if m else 0
    out["failed"] = out["done"] - int(m.group(3)) if m else 0
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    out["mean_us"] = latency_us(m.group(3)) if m else float("nan")
    return out


def print_rates(work: Path) -> None:
    rates = work / "rates"
    if not (rates / "nginx-max").exists():
        return
    nginx_max = int((rates / "nginx-max").read_text())
    results = {}  # (percent, proxy) -> loadgen report
    for f in rates.glob("*.json"):
        pct, proxy = f.stem.split("-", 1)
        results[(int(pct), proxy)] = json.loads(f.read_text())
    percents = sorted({p for p, _ in results})
    print("## Latency at fixed rates, 1 KiB body\n")
    print(
        f"Open loop: requests scheduled at a fixed fraction of nginx's maximum in this "
        f"run ({nginx_max:,} req/s at 1 KiB), latency measured from each request's "
        "intended send time (corrected for coordinated omission). `×nginx` is the "
        "ratio to nginx at the same rate. *behind*: under 95 % of the rate served; "
        "**overloaded**: under 80 %, or requests still waiting 2 s after the schedule "
        "ended; those are given up and enter the percentiles at their age then, "
        "which makes them lower bounds (≥). Higher rates are not run for a proxy "
        "once it is overloaded.\n"
    )
    print("| rate | proxy | achieved req/s | p50 | ×nginx | p99 | ×nginx | p99.9 | ×nginx | errors + given up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pct in percents:
        base = results.get((pct, "nginx"), {})
        for proxy in PROXIES:
            r = results.get((pct, proxy))
            if r is None:
                continue
            label = f"{pct} % ({nginx_max * pct // 100:,}/s)"
            if r.get("skipped"):
                print(f"| {label} | {LABELS[proxy]} | not run: overloaded at a lower rate |"
                      + " |" * 7)
                continue
            over = r["unfinished"] > 0 or r["achieved_rps"] < 0.8 * r["rate"]
            behind = not over and r["achieved_rps"] < 0.95 * r["rate"]
            mark = "≥ " if r["unfinished"] > 0 else ""
            note = " **overloaded**" if over else " *behind*" if behind else ""
            cells = [f"{r['achieved_rps']:,.0f}" + note]
            for key in ("p50_us", "p99_us", "p999_us"):
                cells.append(mark + fmt_lat(r[key]))
                b = base.get(key) if not base.get("skipped") else None
                cells.append(f"{r[key] / b:.2f}" if b else "–")
            cells.append(str(r["errors"] + r["unfinished"]))
            print(f"| {label} | {LABELS[proxy]} | " + " | ".join(cells) + " |")
    print()


def print_h2(work: Path) -> None:
    h2 = work / "h2"
    files = sorted(h2.glob("*.h2load")) if h2.exists() else []
    if not files:
        return
    cases = {}
    for f in files:
        body, proxy = f.stem.split("-", 1)
        m = parse_h2load(f.read_text())
        if m is not None:
            meta = parse_meta(f.with_suffix(".meta").read_text())
            done = m["done"] or 1
            m["cpu_us"] = meta["cpu_ticks"] / meta["hz"] * 1e6 / done
        cases[(int(body), proxy)] = m
    print("## HTTP/2 (cleartext, prior knowledge), maximum throughput\n")
    print(
        "h2load -t1 -c16 -m4 (64 requests in flight, as wrk's 64 connections); the "
        "proxies speak HTTP/1.1 to the backend. Latency is h2load's mean time per "
        "request at saturation (it reports no percentiles).\n"
    )
    print("| body | proxy | req/s | ×nginx | mean latency | CPU µs/req | ×nginx | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for body in sorted({b for b, _ in cases}):
        base = cases.get((body, "nginx"))
        for proxy in PROXIES:
            if (body, proxy) not in cases:
                continue
            m = cases[(body, proxy)]
            if m is None:
                print(f"| {body} B | {LABELS[proxy]} | no h2c (prior knowledge) | | | | | |")
                continue
            rps_x = f"{m['rps'] / base['rps']:.2f}" if base else "–"
            cpu_x = f"{m['cpu_us'] / base['cpu_us']:.2f}" if base and base["cpu_us"] else "–"
            print(
                f"| {body} B | {LABELS[proxy]} | {m['rps']:,.0f} | {rps_x} | "
                f"{fmt_lat(m['mean_us'])} | {m['cpu_us']:.1f} | {cpu_x} | {m['failed']} |"
            )
    print()


def cpu_per(meta_path: Path, n: int) -> float:
    meta = parse_meta(meta_path.read_text())
    return meta["cpu_ticks"] / meta["hz"] * 1e6 / n if n else float("nan")


def print_tls(work: Path) -> None:
    tls = work / "tls"
    if not tls.exists() or not any(tls.glob("*-nginx.*")) and not any(tls.glob("*-wicket.*")):
        return
    rows = []
    for case, label in [
        ("keepalive", "keep-alive HTTP/1.1 (wrk -c64)"),
        ("h2", "keep-alive HTTP/2 (h2load -c16 -m4)"),
        ("handshake", "new handshake per request (wrk -c16, Connection: close)"),
    ]:
        found = {}
        for proxy in ("wicket", "nginx"):
            if case == "h2":
                f = tls / f"h2-{proxy}.h2load"
                if not f.exists():
                    continue
                m = parse_h2load(f.read_text())
                if m is None:
                    continue
                m["cpu_us"] = cpu_per(f.with_suffix(".meta"), m["done"])
                m["errors"] = m["failed"]
            else:
                f = tls / f"{case}-{proxy}.wrk"
                if not f.exists():
                    continue
                m = parse_wrk(f.read_text())
                m["cpu_us"] = cpu_per(f.with_suffix(".meta"), m["requests"])
                m["errors"] = m["non2xx"] + m["socket_errors"]
            found[proxy] = m
        rows.append((label, found))
    print("## TLS termination (1 KiB bodies; Wicket without plugins and nginx)\n")
    print("| case | proxy | req/s | ×nginx | CPU µs/req | ×nginx | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, found in rows:
        base = found.get("nginx")
        for proxy in ("wicket", "nginx"):
            if proxy not in found:
                continue
            m = found[proxy]
            rps_x = f"{m['rps'] / base['rps']:.2f}" if base and base["rps"] else "–"
            cpu_x = f"{m['cpu_us'] / base['cpu_us']:.2f}" if base and base["cpu_us"] else "–"
            print(
                f"| {label} | {LABELS[proxy]} | {m['rps']:,.0f} | {rps_x} | "
                f"{m['cpu_us']:.1f} | {cpu_x} | {m['errors']} |"
            )
    print()


def print_ws(work: Path) -> None:
    ws = work / "ws"
    found = {}
    for proxy in ("wicket", "nginx"):
        f = ws / f"{proxy}.json"
        if f.exists() and f.read_text().strip():
            m = json.loads(f.read_text())
            m["cpu_us"] = cpu_per(f.with_suffix(".meta"), m["messages"])
            found[proxy] = m
    if not found:
        return
    print("## WebSocket echo (1 KiB binary messages, one in flight per connection)\n")
    print("| proxy | messages/s | ×nginx | MiB/s each way | CPU µs/message | ×nginx |")
    print("|---|---:|---:|---:|---:|---:|")
    base = found.get("nginx")
    for proxy, m in found.items():
        x = f"{m['messages_per_sec'] / base['messages_per_sec']:.2f}" if base else "–"
        cx = f"{m['cpu_us'] / base['cpu_us']:.2f}" if base and base["cpu_us"] else "–"
        print(
            f"| {LABELS[proxy]} | {m['messages_per_sec']:,.0f} | {x} | "
            f"{m['bytes_per_sec'] / 1048576:.1f} | {m['cpu_us']:.1f} | {cx} |"
        )
    print()


def against_3(cases: dict, runs: list, body: int, proxy: str, what: str) -> None:
    """A variant of the 3-policy chain against the plain one, per run."""
    pairs = [(cases.get((r, body, proxy)), cases.get((r, body, "wicket-3"))) for r in runs]
    pairs = [(v, base) for v, base in pairs if v and base and base["rps"]]
    if not pairs:
        return
    rps = statistics.median(v["rps"] / base["rps"] for v, base in pairs)
    cpu = statistics.median(v["cpu_us"] - base["cpu_us"] for v, base in pairs)
    p50 = statistics.median(v["p50"] - base["p50"] for v, base in pairs)
    print(
        f"{what}, 3 policies (medians of per-run figures): "
        f"req/s ×{rps:.2f}, CPU per request {cpu:+.1f} µs, p50 {p50:+.0f} µs.\n"
    )


def main() -> None:
    work, machine, date = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    raw = work / "raw"
    cases = {}  # (run, body, proxy) -> metrics
    for wrk in sorted(raw.glob("*.wrk")):
        run, body, proxy = wrk.stem.split("-", 2)
        m = parse_wrk(wrk.read_text())
        meta = parse_meta(wrk.with_suffix(".meta").read_text())
        cpu_s = meta["cpu_ticks"] / meta["hz"]
        m["cpu_us"] = cpu_s * 1e6 / m["requests"] if m["requests"] else float("nan")
        m["rss_mib"] = meta["hwm_kb"] / 1024
        cases[(int(run), int(body), proxy)] = m

    bodies = sorted({b for _, b, _ in cases})
    runs = sorted({r for r, _, _ in cases})
    metrics = [
        ("rps", "req/s", "{:,.0f}"),
        ("p50", "p50", None),
        ("p99", "p99", None),
        ("cpu_us", "CPU µs/req", "{:.1f}"),
        ("rss_mib", "peak RSS MiB", "{:.1f}"),
    ]

    print(f"# Proxy benchmark, {date}\n")
    print(machine.read_text().rstrip() + "\n")
    print(
        "Each figure is the median over runs; `×nginx` is the median of the per-run "
        "ratios to nginx (req/s: higher is better; the rest: lower is better). "
        "Latency is wrk's at maximum throughput (not corrected for coordinated "
        "omission). CPU is the proxy's user+system time per request; peak RSS is "
        "VmHWM summed over the proxy's processes.\n"
    )
    problems = []
    for body in bodies:
        print(f"## Response body {body} B\n")
        header = "| proxy |" + "".join(f" {label} | ×nginx |" for _, label, _ in metrics)
        print(header)
        print("|---|" + "---:|---:|" * len(metrics))
        for proxy in PROXIES:
            if not any((r, body, proxy) in cases for r in runs):
                continue
            cells = []
            for key, _, fmt in metrics:
                values, ratios = [], []
                for r in runs:
                    case, base = cases.get((r, body, proxy)), cases.get((r, body, "nginx"))
                    if case is None:
                        continue
                    values.append(case[key])
                    if base and base[key]:
                        ratios.append(case[key] / base[key])
                v = statistics.median(values)
                cells.append(fmt_lat(v) if fmt is None else fmt.format(v))
                cells.append(f"{statistics.median(ratios):.2f}" if ratios else "–")
            print(f"| {LABELS[proxy]} | " + " | ".join(cells) + " |")
            for r in runs:
                case = cases.get((r, body, proxy))
                if case and (case["non2xx"] or case["socket_errors"]):
                    problems.append(
                        f"run {r}, {body} B, {LABELS[proxy]}: {case['non2xx']} non-2xx "
                        f"responses, {case['socket_errors']} socket errors"
                    )
        print()
        against_3(cases, runs, body, "wicket-3r", "State on Redis against memory")
        against_3(cases, runs, body, "wicket-3t", "Every request traced against tracing off")
    if problems:
        print("## Errors seen\n")
        for p in problems:
            print(f"- {p}")
        print()
    print_rates(work)
    print_h2(work)
    print_tls(work)
    print_ws(work)


if __name__ == "__main__":
    main()
