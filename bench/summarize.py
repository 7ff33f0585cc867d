"""Turn bench/run's raw files into the markdown report.

Usage: summarize.py RAW_DIR MACHINE_MD DATE > report.md

RAW_DIR holds `<run>-<body>-<proxy>.wrk` (wrk --latency output) and
`.meta` (cpu_ticks, hz, hwm_kb) per case. Every figure is the median over
runs; each ratio is taken against nginx within the same run and body, then
the median of those ratios is reported.
"""

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PROXIES = ["wicket", "wicket-3", "wicket-5", "nginx", "haproxy"]
LABELS = {
    "wicket": "Wicket, no plugins",
    "wicket-3": "Wicket, 3 policies",
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


def main() -> None:
    raw, machine, date = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
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

    def fmt_lat(us: float) -> str:
        return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"

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
    if problems:
        print("## Errors seen\n")
        for p in problems:
            print(f"- {p}")
        print()


if __name__ == "__main__":
    main()
