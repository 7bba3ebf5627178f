"""`make load`: Locust over gRPC against the embedded stack (Triton + orchestrator), headless.

Builds the stack like the demo (export -> repository -> start), then runs `loadtests/locustfile.py`
in a subprocess under `timeout -s KILL` and writes, under --out (default out/load/):

    locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv  (--csv)
    locust_stats.json  Locust's final stats (written after all users stopped, so complete: the
                       CSV is rewritten once a second and can miss the last calls; the summary
                       and the exit code come from this file, from the CSV only if it is missing)
    report.html                                                                              (--html)
    metrics/{orchestrator,triton}_{start,end}.prom   both /metrics endpoints, before and after
    resources.csv      RSS of the Triton process tree (tritonserver + Python stubs) and of the
                       orchestrator (this process), sampled through the run
    summary.json       p50/p95/p99 per RPC, failures, RSS at start and end, server-side counters
    locust.log         Locust's own output

It prints p50/p95/p99 per RPC and exits non-zero if any request failed (or none was made).

    python loadtests/run.py --users 8 --run-time 60s        # make load
    python loadtests/run.py --run-time 10m                  # the soak: make load LOAD_ARGS="--run-time 10m"
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
STOP_TIMEOUT_S = 10  # Locust lets users finish their task and run on_stop (CloseImage) this long
EXPECTED_SERIES = {"orchestrator": ("segserve_request_latency_seconds",),
                   "triton": ("nv_inference_request_success",)}


# ----------------------------------------------------------------------------- the stack


def default_families() -> list[str]:
    """Every served family: the mix has a user for each."""
    return ["sam2", "mask2former", "grounding_dino", "sam2_video"]


def _prepare(families: list[str], artifacts: str, repository: str, size: str) -> None:
    from segserve.export.families import export_families
    from segserve.repository.builder import build_repository

    export_families(families, Path(artifacts), size=size)
    build_repository(Path(artifacts), Path(repository), "embedded")


def prepare(families: list[str], artifacts: Path, repository: Path, size: str = "tiny") -> None:
    """Export (reusing cached artifacts) and build the embedded repository, in a child process so
    that torch never loads into the orchestrator's process (its RSS is measured)."""
    process = multiprocessing.get_context("spawn").Process(
        target=_prepare, args=(families, str(artifacts), str(repository), size), name="segserve-export")
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"export / build-repo failed (exit code {process.exitcode})")


# ----------------------------------------------------------------------------- measurements


def scrape(url: str, path: Path | None = None, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        text = reply.read().decode()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def metric_names(text: str) -> set[str]:
    """Family names (# TYPE lines) and sample names in a Prometheus exposition."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one sample name, exactly as exposed (no _total renaming)."""
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
            out[labels] = float(match.group(3))
    return out


def counter_delta(start: str, end: str, name: str, keep: tuple[str, ...]) -> dict[str, float]:
    """End minus start of a counter, summed over all labels but `keep` (joined as 'a=x,b=y')."""
    def grouped(text):
        totals: dict[str, float] = {}
        for labels, value in samples(text, name).items():
            key = ",".join(f"{k}={v}" for k, v in labels if k in keep)
            totals[key] = totals.get(key, 0.0) + value
        return totals
    before, after = grouped(start), grouped(end)
    return {k: after[k] - before.get(k, 0.0) for k in sorted(after) if after[k] - before.get(k, 0.0)}


def tree_rss(pid: int) -> dict:
    """RSS of a process and all its descendants (bytes), with the per-process breakdown."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"total": 0, "processes": []}
    rows = []
    for p in processes:
        try:
            rows.append({"pid": p.pid, "name": p.name(), "rss": p.memory_info().rss})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"total": sum(r["rss"] for r in rows), "processes": rows}


def memory_snapshot(stack) -> dict:
    return {"triton": tree_rss(stack.triton.process.pid),
            "orchestrator": {"total": psutil.Process(os.getpid()).memory_info().rss, "pid": os.getpid()}}


class ResourceSampler(threading.Thread):
    """Samples both RSS figures every `interval_s` into a CSV (and a progress line every minute)."""

    def __init__(self, stack, path: Path, interval_s: float = 5.0, progress_s: float = 60.0):
        super().__init__(name="rss-sampler", daemon=True)
        self.stack, self.path, self.interval_s, self.progress_s = stack, path, interval_s, progress_s
        self.stopped = threading.Event()

    def run(self) -> None:
        start = last_progress = time.monotonic()
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["elapsed_s", "triton_rss_mib", "triton_processes", "orchestrator_rss_mib"])
            while True:
                snap = memory_snapshot(self.stack)
                elapsed = time.monotonic() - start
                row = [f"{elapsed:.1f}", f"{snap['triton']['total'] / 2**20:.1f}",
                       len(snap["triton"]["processes"]), f"{snap['orchestrator']['total'] / 2**20:.1f}"]
                writer.writerow(row)
                f.flush()
                if time.monotonic() - last_progress >= self.progress_s:
                    last_progress = time.monotonic()
                    print(f"[load] {elapsed:.0f} s: Triton RSS {row[1]} MiB ({row[2]} processes), "
                          f"orchestrator RSS {row[3]} MiB", flush=True)
                if self.stopped.wait(self.interval_s):
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


# ----------------------------------------------------------------------------- Locust


def parse_duration(text: str) -> float:
    """Locust's --run-time syntax: 90, 90s, 10m, 1h30m."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text):
        raise ValueError(f"bad duration {text!r}: use e.g. 60s, 10m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def locust_command(address: str, users: int, spawn_rate: float, run_time: str, csv_prefix: Path,
                   html: Path, json_file: Path, user_classes: list[str] | None = None, extra: list[str] | None = None) -> list[str]:
    kill_after = int(parse_duration(run_time) + STOP_TIMEOUT_S + 90)  # start-up, stop, reports
    return ["timeout", "-s", "KILL", str(kill_after),
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", address, "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time,
            "--stop-timeout", str(STOP_TIMEOUT_S), "--csv", str(csv_prefix), "--html", str(html), "--json-file", str(json_file.with_suffix("")),  # Locust adds .json
            "--only-summary", "--exit-code-on-error", "1", *(extra or []), *(user_classes or [])]


@dataclass
class RpcStats:
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rps: float


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_stats(stats_csv: Path) -> list[RpcStats]:
    """Per-RPC rows of Locust's *_stats.csv; the last row is 'Aggregated'."""
    rows = []
    with open(stats_csv, newline="") as f:
        for row in csv.DictReader(f):
            rows.append(RpcStats(row["Name"], int(row["Request Count"]), int(row["Failure Count"]),
                                 _number(row["50%"]), _number(row["95%"]), _number(row["99%"]),
                                 _number(row["Max Response Time"]), _number(row["Requests/s"]) or 0.0))
    return rows


def percentile(histogram: dict[float, int], fraction: float) -> float | None:
    """Nearest-rank percentile of Locust's response-time histogram {rounded ms: count}."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def read_json_stats(path: Path) -> list[RpcStats]:
    """Per-RPC rows plus 'Aggregated' from Locust's --json-file (written after every user stopped,
    so it holds the on_stop calls too; the CSV is written once a second and can miss the last one)."""
    entries = json.loads(Path(path).read_text())
    if not entries:
        return []
    duration = max(max(e["last_request_timestamp"] or 0 for e in entries) - min(e["start_time"] for e in entries), 1e-9)
    merged: dict[float, int] = {}
    rows = []
    for e in sorted(entries, key=lambda e: e["name"]):
        histogram = {float(k): int(v) for k, v in e["response_times"].items()}
        for k, v in histogram.items():
            merged[k] = merged.get(k, 0) + v
        rows.append(RpcStats(e["name"], e["num_requests"], e["num_failures"], percentile(histogram, 0.5),
                             percentile(histogram, 0.95), percentile(histogram, 0.99), e["max_response_time"],
                             round(e["num_requests"] / duration, 3)))
    requests = sum(r.requests for r in rows)
    rows.append(RpcStats("Aggregated", requests, sum(r.failures for r in rows), percentile(merged, 0.5),
                         percentile(merged, 0.95), percentile(merged, 0.99), max((r.max_ms or 0) for r in rows),
                         round(requests / duration, 3)))
    return rows


def read_failures(failures_csv: Path) -> list[dict]:
    if not failures_csv.is_file():
        return []
    with open(failures_csv, newline="") as f:
        return list(csv.DictReader(f))


def format_table(stats: list[RpcStats]) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.0f}"
    lines = [f"{'RPC':<28} {'requests':>8} {'fails':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for s in stats:
        lines.append(f"{s.name:<28} {s.requests:>8} {s.failures:>6} {s.rps:>7.2f} {ms(s.p50_ms):>8} "
                     f"{ms(s.p95_ms):>8} {ms(s.p99_ms):>8} {ms(s.max_ms):>8}")
    return "\n".join(lines)


def run_load(stack, out: Path, users: int = 8, spawn_rate: float = 2.0, run_time: str = "60s",
             csv_prefix: Path | None = None, html: Path | None = None, user_classes: list[str] | None = None,
             sample_interval_s: float = 5.0, locust_args: list[str] | None = None) -> dict:
    """Run Locust against a started stack; returns the summary (also written to out/summary.json)."""
    out = Path(out).resolve()  # Locust runs in the repository root
    out.mkdir(parents=True, exist_ok=True)
    csv_prefix = Path(csv_prefix or out / "locust").resolve()
    html = Path(html or out / "report.html").resolve()
    json_file = Path(f"{csv_prefix}_stats.json")
    for stale in [*csv_prefix.parent.glob(csv_prefix.name + "_*.csv"), html, json_file]:
        stale.unlink(missing_ok=True)
    urls = {"orchestrator": f"http://127.0.0.1:{stack.orchestrator.service.settings.metrics_port}/metrics",
            "triton": stack.triton.metrics_url}
    metrics_dir = out / "metrics"
    start_metrics = {k: scrape(u, metrics_dir / f"{k}_start.prom") for k, u in urls.items()}
    memory_start = memory_snapshot(stack)
    sampler = ResourceSampler(stack, out / "resources.csv", sample_interval_s)
    sampler.start()

    command = locust_command(stack.address, users, spawn_rate, run_time, csv_prefix, html, json_file, user_classes,
                             locust_args)
    env = {**os.environ, "SEGSERVE_LOAD_HOST": stack.address, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    try:
        with open(out / "locust.log", "wb") as log:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=HERE.parent).returncode
    finally:
        sampler.stop()
    wall_s = time.monotonic() - started

    memory_end = memory_snapshot(stack)
    end_metrics = {k: scrape(u, metrics_dir / f"{k}_end.prom") for k, u in urls.items()}
    stats_csv = Path(f"{csv_prefix}_stats.csv")
    if json_file.is_file():
        stats = read_json_stats(json_file)
    else:  # killed before the end: the CSV holds what was written up to then
        stats = read_stats(stats_csv) if stats_csv.is_file() else []
    per_rpc = [s for s in stats if s.name != "Aggregated"]
    total = next((s for s in stats if s.name == "Aggregated"), None)
    series = {k: {name: any(n == name or n.startswith(name + "_") for n in metric_names(end_metrics[k]))
                  for name in EXPECTED_SERIES[k]} for k in urls}
    summary = {
        "address": stack.address,
        "users": users, "spawn_rate": spawn_rate, "run_time": run_time, "wall_s": round(wall_s, 1),
        "locust_returncode": returncode, "killed": returncode in (-9, 137),
        "requests": total.requests if total else 0,
        "failures": total.failures if total else 0,
        "rpcs": [asdict(s) for s in per_rpc],
        "aggregated": asdict(total) if total else None,
        "failure_messages": read_failures(Path(f"{csv_prefix}_failures.csv")),
        "memory_mib": {
            "triton_start": round(memory_start["triton"]["total"] / 2**20, 1),
            "triton_end": round(memory_end["triton"]["total"] / 2**20, 1),
            "triton_processes_end": [{**p, "rss": round(p["rss"] / 2**20, 1)} for p in memory_end["triton"]["processes"]],
            "orchestrator_start": round(memory_start["orchestrator"]["total"] / 2**20, 1),
            "orchestrator_end": round(memory_end["orchestrator"]["total"] / 2**20, 1),
        },
        "server": {
            "orchestrator_requests": counter_delta(start_metrics["orchestrator"], end_metrics["orchestrator"],
                                                   "segserve_requests_total", ("method", "code")),
            "triton_success": counter_delta(start_metrics["triton"], end_metrics["triton"],
                                            "nv_inference_request_success", ("model",)),
            "triton_failure": counter_delta(start_metrics["triton"], end_metrics["triton"],
                                            "nv_inference_request_failure", ("model", "reason")),
        },
        "series_scraped": series,
        "files": {"csv": str(stats_csv), "html": str(html), "json": str(json_file), "metrics": str(metrics_dir),
                  "resources": str(out / "resources.csv"), "log": str(out / "locust.log")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict) -> None:
    rpcs = [RpcStats(**r) for r in summary["rpcs"]] + ([RpcStats(**summary["aggregated"])] if summary["aggregated"] else [])
    print(format_table(rpcs))
    m = summary["memory_mib"]
    print(f"[load] RSS Triton tree {m['triton_start']} -> {m['triton_end']} MiB, "
          f"orchestrator {m['orchestrator_start']} -> {m['orchestrator_end']} MiB")
    print(f"[load] requests {summary['requests']}, failures {summary['failures']}, locust exit "
          f"{summary['locust_returncode']}{' (KILLED by timeout)' if summary['killed'] else ''}, "
          f"wall {summary['wall_s']} s")
    for failure in summary["failure_messages"][:10]:
        print(f"[load] FAILED {failure.get('Name')} x{failure.get('Occurrences')}: {failure.get('Error')}")
    print(f"[load] reports: {summary['files']['html']}, {summary['files']['csv']}, {summary['files']['metrics']}/")


def problems(summary: dict) -> list[str]:
    found = []
    if summary["aggregated"] is None:
        found.append("Locust wrote no stats CSV (see locust.log)")
    elif summary["requests"] == 0:
        found.append("no request was made")
    if summary["failures"]:
        found.append(f"{summary['failures']} request(s) failed")
    if summary["locust_returncode"] not in (0, 1):  # 1 = failures, counted above
        found.append(f"Locust exited with {summary['locust_returncode']}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=2.0)
    parser.add_argument("--run-time", default="60s", help="Locust syntax: 60s, 10m, 1h30m")
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    parser.add_argument("--csv", type=Path, default=None, help="CSV prefix (default OUT/locust)")
    parser.add_argument("--html", type=Path, default=None, help="HTML report (default OUT/report.html)")
    parser.add_argument("--families", default=None,
                        help="families to export, comma-separated; default sam2 (+ mask2former if served). The "
                             "repository serves every family exported into --artifacts: for SAM 2 alone, give a "
                             "fresh --artifacts folder too")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository/embedded"))
    parser.add_argument("--workspace", type=Path, default=Path("build/load-triton"))
    parser.add_argument("--random-size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--user-classes", default=None,
                        help="comma-separated Locust user classes (default: all the locustfile serves)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="RSS sampling period, seconds")
    args = parser.parse_args(argv)
    parse_duration(args.run_time)  # fail early on a bad duration

    from segserve.runtime.stack import start_stack

    families = args.families.split(",") if args.families else default_families()
    if not os.environ.get("SEGSERVE_SAM2_CHECKPOINT"):
        print(f"[load] no checkpoint given: RANDOM-WEIGHT models ({args.random_size}); latencies are real, "
              "masks are not meaningful.", flush=True)
    t0 = time.perf_counter()
    prepare(families, args.artifacts, args.repository, args.random_size)
    print(f"[load] repository {args.repository} ({', '.join(families)}) ready in {time.perf_counter() - t0:.0f} s",
          flush=True)
    with start_stack(args.repository, args.workspace) as stack:
        print(f"[load] stack up: orchestrator {stack.address}, Triton {stack.triton.grpc_url}; Locust "
              f"{args.users} users (+{args.spawn_rate}/s) for {args.run_time}", flush=True)
        summary = run_load(stack, args.out, args.users, args.spawn_rate, args.run_time, args.csv, args.html,
                           args.user_classes.split(",") if args.user_classes else None, args.sample_interval)
    summary["families"] = families
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    found = problems(summary)
    for problem in found:
        print(f"[load] FAIL: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
