"""sesflow benchmarks: one command, a table on the terminal, the figures as JSON.

    .venv/bin/python tests/bench/run.py                  # full size, 3 runs per scenario
    .venv/bin/python tests/bench/run.py --smoke          # tiny sizes (CI), 1 run
    .venv/bin/python tests/bench/run.py --only sender --repeat 5 --json out.json

Every run of a scenario starts its own redis-server (no AOF) on a free loopback port, and the
roles as real processes. Each figure is the median over the runs, with the spread (min-max).
A figure that misses its target is reported, not fatal; a scenario that crashes makes the
command exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script: `tests/` on the path makes `bench.*` and `support.*` importable, as under pytest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sesflow.cli.embedded import redis_server_binary

from bench import (
    scenario_archive,
    scenario_e2e,
    scenario_ingest,
    scenario_lookups,
    scenario_memory,
    scenario_rate,
    scenario_sender,
    scenario_sending,
    scenario_sharing,
    scenario_stats,
    scenario_tracker,
    scenario_webhooks,
)
from bench.benchkit import Metric, ScenarioResult, median
from support.snssign import SnsSigner


def at_least(bound: float) -> Callable[[float], bool]:
    return lambda value: value >= bound


def at_most(bound: float) -> Callable[[float], bool]:
    return lambda value: value <= bound


RATE = scenario_rate.RATE
BURST = 1  # EMAIL_BURST's default

METRICS: dict[str, list[Metric]] = {
    "ingest": [
        Metric(
            "http_accept_rps",
            "HTTP accepted (202), recipients/s",
            "/s",
            "≥ 50,000",
            at_least(50_000),
        ),
        Metric(
            "http_queued_rps",
            "HTTP until all jobs queued, recipients/s",
            "/s",
            "≥ 50,000",
            at_least(50_000),
        ),
        Metric("producer_xadd_rps", "producer XADD, recipients/s", "/s"),
        Metric("producer_queued_rps", "producer until all jobs queued, recipients/s", "/s"),
    ],
    "sender": [
        Metric("sender_0ms_cps", "sender, stub 0 ms: calls/s", "/s"),
        Metric(
            "sender_0ms_cpu_us",
            "sender, stub 0 ms: process CPU per call",
            "µs",
            "≤ 250",
            at_most(250),
        ),
        Metric("sender_boto3_0ms_cps", "sender SES_CLIENT=boto3, 0 ms: calls/s", "/s"),
        Metric("sender_boto3_0ms_cpu_us", "sender SES_CLIENT=boto3, 0 ms: CPU per call", "µs"),
        Metric("loop_0ms_cps", "plain boto3 loop, 0 ms: calls/s", "/s"),
        Metric("loop_0ms_cpu_us", "plain boto3 loop, 0 ms: CPU per call", "µs"),
        Metric("ratio_0ms_vs_loop", "sender / boto3 loop, calls/s at 0 ms", "x", digits=2),
        Metric(
            "ratio_per_core_vs_loop",
            "sender / boto3 loop, calls per CPU-second",
            "x",
            "≥ 4",
            at_least(4),
            digits=2,
        ),
        Metric(
            "ratio_0ms_vs_sender_boto3", "sender / sender on boto3, calls/s at 0 ms", "x", digits=2
        ),
        Metric("sender_20ms_cps", "sender, stub 20 ms: calls/s", "/s"),
        Metric("sender_20ms_cpu_us", "sender, stub 20 ms: process CPU per call", "µs"),
        Metric("sender_boto3_20ms_cps", "sender SES_CLIENT=boto3, 20 ms: calls/s", "/s"),
        Metric("loop_20ms_cps", "plain boto3 loop, 20 ms: calls/s", "/s"),
        Metric("ratio_20ms_vs_loop", "sender / boto3 loop, calls/s at 20 ms", "x", digits=1),
        Metric(
            "ratio_20ms_vs_sender_boto3",
            "sender / sender on boto3, calls/s at 20 ms",
            "x",
            digits=2,
        ),
        Metric(
            "client_cpu_us",
            "SesClient alone, 16 in flight: CPU per call",
            "µs",
            "≤ 250",
            at_most(250),
        ),
        Metric("client_boto3_cpu_us", "boto3 send_email alone: CPU per call", "µs"),
        Metric(
            "client_ratio_per_core",
            "SesClient / boto3, calls per CPU-second",
            "x",
            "≥ 4",
            at_least(4),
            digits=2,
        ),
    ],
    "rate": [
        Metric(
            "max_1s_window",
            f"EMAIL_RATE={RATE}, 4 replicas: max sends in any 1 s",
            "",
            f"≤ {RATE * 1.05:g} (+5%)",
            at_most(RATE * 1.05),
        ),
        Metric(
            "mean_rate",
            "mean rate",
            "/s",
            f"{RATE} ± 2%",
            lambda v: abs(v - RATE) <= 0.02 * RATE,
            digits=1,
        ),
        Metric("throttled_429", "429s from a stub enforcing 200/s", "", "0", at_most(0)),
    ],
    "tracker": [
        Metric(
            "tracker_eps",
            "signed SNS events verified + recorded/s",
            "/s",
            "≥ 3,000",
            at_least(3000),
        ),
    ],
    "webhooks": [
        Metric(
            "webhook_deliveries_per_s",
            "signed deliveries to a local receiver, /s",
            "/s",
        ),
        Metric("webhook_seconds", "time for every delivery", "s", digits=2),
        Metric("webhook_cpu_us", "stats process CPU per delivery", "µs"),
    ],
    "stats": [
        Metric("stats_p50_ms_1M", "after 1M events: p50 (median over endpoints)", "ms", digits=2),
        Metric(
            "stats_p99_ms_1M",
            "after 1M events: p99 (worst endpoint)",
            "ms",
            "≤ 5",
            at_most(5),
            digits=2,
        ),
        Metric("stats_p50_ms_10M", "after 10M events: p50 (median over endpoints)", "ms", digits=2),
        Metric(
            "stats_p99_ms_10M",
            "after 10M events: p99 (worst endpoint)",
            "ms",
            "≤ 5",
            at_most(5),
            digits=2,
        ),
        Metric(
            "stats_p99_ratio_10M_1M",
            "p99 at 10M / p99 at 1M",
            "x",
            "≈ 1 (O(1))",
            lambda v: v <= 1.5,
            digits=2,
        ),
        Metric("stats_catchup_cpu_s", "catching up on 1M events: stats process CPU", "s", digits=2),
        Metric("stats_catchup_p50_ms", "… a topic's counters meanwhile: p50", "ms", digits=1),
        Metric("stats_catchup_p99_ms", "… p99", "ms", digits=1),
    ],
    "memory": [
        Metric(
            "bytes_per_recipient", "Redis bytes per queued recipient", "B", "≤ 300", at_most(300)
        ),
        Metric("bytes_per_recipient_trimmed", "… without the untrimmed requests stream", "B"),
        Metric("sends_bytes_per_recipient", "… of which the queued jobs (backlogs, sends)", "B"),
        Metric(
            "retained_bytes_per_recipient",
            "Redis bytes per recipient kept after a finished campaign (identity notifications)",
            "B",
            "≤ 64",
            at_most(64),
        ),
        Metric("retained_tagged", "… with configuration-set events (no SES-id links)", "B"),
    ],
    "sending": [
        Metric("loop_cpu_us", "plain boto3 send_email loop: CPU per email", "µs"),
        *(
            metric
            for mode, factor in (("bulk", 10), ("single", 2))
            for label, what in (("max", "unthrottled"), ("500", "EMAIL_RATE=500"))
            for metric in (
                Metric(
                    f"{mode}_{label}_cpu_us",
                    f"SEND_MODE={mode}, {what}: sender CPU per recipient",
                    "µs",
                ),
                Metric(
                    f"{mode}_{label}_vs_loop",
                    "… boto3 loop CPU / sender CPU per recipient",
                    "x",
                    f"≥ {factor}",
                    at_least(factor),
                    digits=1,
                ),
                Metric(f"{mode}_{label}_rps", "… recipients/s", "/s"),
                Metric(f"{mode}_{label}_per_call", "… recipients per SES call", "", digits=1),
            )
        ),
    ],
    "e2e": [
        Metric(
            "e2e_p50_ms",
            "POST → SES call, p50 (50 msgs/s, rate 200)",
            "ms",
            "≤ 50",
            at_most(50),
            digits=1,
        ),
        Metric("e2e_p99_ms", "POST → SES call, p99", "ms", digits=1),
    ],
    "archive": [
        Metric(
            "archive_sqlite_eps",
            "archive into SQLite (WAL, synchronous=FULL): events/s",
            "/s",
            "≥ 20,000",
            at_least(20_000),
        ),
        Metric("archive_sqlite_cpu_us", "… writer CPU per event", "µs", digits=1),
        Metric("archive_sqlite_eps_per_core", "… events per CPU-second", "/s"),
        Metric(
            "archive_postgres_eps",
            "archive into Postgres (fsync on): events/s",
            "/s",
            "≥ 20,000",
            at_least(20_000),
        ),
        Metric("archive_postgres_cpu_us", "… writer + Postgres CPU per event", "µs", digits=1),
        Metric("archive_postgres_eps_per_core", "… events per CPU-second", "/s"),
    ],
    "sharing": [
        *(
            metric
            for n in (1, 4)
            for metric in (
                Metric(
                    f"r{n}_fair_ratio",
                    f"{n} sender{'s' * (n > 1)}: 100-recipient topic after the campaign, "
                    "finish / fair-share time",
                    "x",
                    "≤ 2",
                    at_most(2),
                    digits=2,
                ),
                Metric(
                    f"r{n}_tx_p50_ms",
                    "… transactional POST → SES call under the campaign, p50",
                    "ms",
                    "≤ 100",
                    at_most(100),
                ),
                Metric(f"r{n}_tx_p99_ms", "… p99", "ms", "≤ 1,000", at_most(1000)),
                Metric(f"r{n}_tx_max_ms", "… max", "ms"),
                Metric(f"r{n}_sender_cpu_us", "… senders' CPU per recipient", "µs"),
            )
        ),
        Metric("r1_pump_calls_per_recipient", "pump calls per recipient (1 sender)", "", digits=2),
        Metric(
            "pump_call_client_us",
            "one busy pump call (20 jobs at 200/s): client CPU",
            "µs",
            digits=1,
        ),
        Metric("pump_call_redis_us", "… Redis CPU (EVALSHA time)", "µs", digits=1),
        Metric("pump_client_us_per_recipient", "pump: sender CPU per recipient", "µs", digits=1),
        Metric("pump_redis_us_per_recipient", "pump: Redis CPU per recipient", "µs", digits=1),
    ],
}


def lookup_metrics() -> list[Metric]:
    """Per backend: the worst route's p99 (the target), then each route's p50 and p99."""
    out = []
    for backend in scenario_lookups.BACKENDS:
        out.append(
            Metric(
                f"lookups_p99_ms_{backend}",
                f"{backend}: p99 of the slowest route",
                "ms",
                "≤ 20",
                at_most(20),
                digits=2,
            )
        )
        for route in scenario_lookups.ROUTES:
            for q in ("p50", "p99"):
                out.append(
                    Metric(
                        f"lookups_{q}_ms_{backend}_{route}",
                        f"{backend}: {route} {q}",
                        "ms",
                        digits=2,
                    )
                )
        out.append(Metric(f"lookups_fill_s_{backend}", f"{backend}: filling the archive", "s"))
    return out


METRICS["lookups"] = lookup_metrics()


@dataclass(frozen=True)
class Sizes:
    ingest: scenario_ingest.Size
    sender: scenario_sender.Size
    rate: scenario_rate.Size
    tracker: scenario_tracker.Size
    stats: scenario_stats.Size
    memory: scenario_memory.Size
    e2e: scenario_e2e.Size
    sending: scenario_sending.Size
    sharing: scenario_sharing.Size
    webhooks: scenario_webhooks.Size
    lookups: scenario_lookups.Size
    archive: scenario_archive.Size


FULL = Sizes(
    ingest=scenario_ingest.Size(messages=200),
    sender=scenario_sender.Size(jobs=10_000, loop_calls=2000, client_calls=3000),
    rate=scenario_rate.Size(seconds=30),
    tracker=scenario_tracker.Size(notifications=5000),
    stats=scenario_stats.Size(entries=100_000, topics=200, requests=300),
    memory=scenario_memory.Size(messages=100, per_message=10_000),
    e2e=scenario_e2e.Size(messages=500),
    sending=scenario_sending.Size(unthrottled=20_000, rate_seconds=16, loop_calls=2000),
    sharing=scenario_sharing.Size(campaign=100_000, tx_seconds=30, pump_calls=2000),
    webhooks=scenario_webhooks.Size(deliveries=20_000),
    lookups=scenario_lookups.Size(recipients=1_000_000, big=50_000, requests=300),
    archive=scenario_archive.Size(events=200_000),
)
SMOKE = Sizes(
    ingest=scenario_ingest.Size(messages=5),
    sender=scenario_sender.Size(jobs=400, loop_calls=100, client_calls=200),
    rate=scenario_rate.Size(seconds=3),
    tracker=scenario_tracker.Size(notifications=100),
    stats=scenario_stats.Size(entries=2000, topics=10, requests=20),
    memory=scenario_memory.Size(messages=10, per_message=1000, retained=5000),
    e2e=scenario_e2e.Size(messages=20),
    sending=scenario_sending.Size(unthrottled=1000, rate_seconds=2, loop_calls=100),
    sharing=scenario_sharing.Size(campaign=3000, tx_seconds=3, pump_calls=200),
    webhooks=scenario_webhooks.Size(deliveries=500),
    lookups=scenario_lookups.Size(recipients=20_000, big=2000, requests=20),
    archive=scenario_archive.Size(events=3000),
)


async def run_scenario(name: str, sizes: Sizes, repeat: int) -> ScenarioResult:
    result = ScenarioResult(name)
    once: Callable[[], Awaitable[dict[str, Any]]]
    signer_ctx = None
    if name == "tracker":
        signer = SnsSigner()
        signer_ctx = signer.serve()
        await signer_ctx.__aenter__()
        bodies = await asyncio.to_thread(
            scenario_tracker.notifications, signer, sizes.tracker.notifications
        )

        async def once() -> dict[str, Any]:
            return await scenario_tracker.run_once(sizes.tracker, signer, bodies)
    else:
        module = {
            "ingest": scenario_ingest,
            "sender": scenario_sender,
            "rate": scenario_rate,
            "stats": scenario_stats,
            "memory": scenario_memory,
            "e2e": scenario_e2e,
            "sending": scenario_sending,
            "sharing": scenario_sharing,
            "webhooks": scenario_webhooks,
            "lookups": scenario_lookups,
            "archive": scenario_archive,
        }[name]
        size = getattr(sizes, name)

        async def once() -> dict[str, Any]:
            figures: dict[str, Any] = await module.run_once(size)
            return figures

    try:
        for n in range(repeat):
            started = time.monotonic()
            figures = await once()
            result.runs.append(figures)
            print(
                f"  {name} run {n + 1}/{repeat}: {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    except Exception:
        result.error = traceback.format_exc()
        print(f"scenario {name} crashed:\n{result.error}", file=sys.stderr, flush=True)
    finally:
        if signer_ctx is not None:
            await signer_ctx.__aexit__(None, None, None)
    return result


def summarise(result: ScenarioResult) -> list[dict[str, Any]]:
    rows = []
    for metric in METRICS[result.name]:
        values = [float(run[metric.key]) for run in result.runs if metric.key in run]
        if not values:
            continue
        mid = median(values)
        passed = metric.check(mid) if metric.check else None
        rows.append(
            {
                "scenario": result.name,
                "key": metric.key,
                "label": metric.label,
                "unit": metric.unit,
                "median": mid,
                "min": min(values),
                "max": max(values),
                "runs": values,
                "target": metric.target,
                "pass": passed,
                "digits": metric.digits,
            }
        )
    return rows


def number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def print_table(rows: list[dict[str, Any]], errors: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sesflow benchmarks (median of runs; spread = min-max)")
    for column in ("scenario", "figure", "median", "spread", "target", "result"):
        table.add_column(column, justify="right" if column in {"median", "spread"} else "left")
    for row in rows:
        d, unit = row["digits"], row["unit"]
        verdict = "" if row["pass"] is None else ("pass" if row["pass"] else "MISS")
        table.add_row(
            row["scenario"],
            row["label"],
            f"{number(row['median'], d)} {unit}".strip(),
            f"{number(row['min'], d)}-{number(row['max'], d)}",
            row["target"],
            verdict,
        )
    for name, error in errors.items():
        table.add_row(name, "CRASHED", "", "", "", error.strip().splitlines()[-1][:60])
    Console(width=140).print(table)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown, for docs/performance.md."""
    lines = [
        "| scenario | figure | median | spread (min-max) | target | result |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in rows:
        d, unit = row["digits"], row["unit"]
        verdict = "" if row["pass"] is None else ("pass" if row["pass"] else "**miss**")
        median_text = f"{number(row['median'], d)} {unit}".strip()
        spread = f"{number(row['min'], d)}-{number(row['max'], d)}"
        lines.append(
            f"| {row['scenario']} | {row['label']} | {median_text} | {spread} "
            f"| {row['target']} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    server = redis_server_binary()
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    import os

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "redis": version.strip(),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(METRICS),
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(METRICS)}",
    )
    parser.add_argument("--repeat", type=int, default=0, help="runs per scenario (3; smoke 1)")
    parser.add_argument("--json", default="bench-results.json", help="where to write the JSON")
    parser.add_argument("--markdown", default="", help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    repeat = args.repeat or (1 if args.smoke else 3)
    names = args.only or list(METRICS)
    started = time.monotonic()
    results = []
    for name in names:
        print(f"running {name} ({repeat} run{'s' * (repeat > 1)})", file=sys.stderr, flush=True)
        results.append(await run_scenario(name, sizes, repeat))
    rows = [row for result in results for row in summarise(result)]
    errors = {r.name: r.error for r in results if r.error}
    print_table(rows, errors)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "size": "smoke" if args.smoke else "full",
        "repeat": repeat,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "figures": rows,
        "runs": {r.name: r.runs for r in results},
        "errors": errors,
    }
    await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=2, default=str))
    if args.markdown:
        await asyncio.to_thread(Path(args.markdown).write_text, markdown_table(rows))
    print(f"JSON written to {args.json} ({report['seconds']} s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
