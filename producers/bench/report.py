"""`torchfleet bench`'s human-readable report: the results table, then the bars."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(console: Console, report: dict[str, Any]) -> None:
    """The results as a rich table, then the bars."""
    m = report["machine"]
    table = Table(
        "arm", "model", "producers", "inputs/job", "jobs", "p50 ms", "p95 ms", "p99 ms",
        "inputs/s", "CPU µs/request: client / worker / redis", expand=False,
        title=f"torchfleet bench: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"celery {m['celery']}, {m['device']}, {m['torch_threads']} thread(s)",
    )  # fmt: skip
    for r in report["results"]:
        table.add_row(
            r["arm"], r["model"], str(r["producers"]), str(r["inputs_per_job"]), str(r["jobs"]),
            f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
            f"{r['throughput']:.0f}", cpu_cell(r["extra"]),
        )  # fmt: skip
    console.print(table)
    load = report.get("load")
    if load:
        console.print(
            f"load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
        )
    verdicts = Table("bar", "value", "target", "passed", title=f"bars ({report['bars']['model']})")
    for name, bar in report["bars"].items():
        if name == "model":
            continue
        value = "-" if bar["value"] is None else f"{bar['value']:.3f}"
        passed = {None: "not measured", True: "yes", False: "NO"}[bar["passed"]]
        verdicts.add_row(name, value, bar["bar"], passed)
    console.print(verdicts)
    ceiling = report["ratios"][report["bars"]["model"]].get("noop_vs_naive_16")
    if ceiling is not None:
        console.print(
            f"A no-op task reaches {ceiling:.2f}x the naive task's throughput at the same load "
            "here: the most any one-message-per-job fleet can show against it on this host."
        )


def cpu_cell(extra: dict[str, float]) -> str:
    """The CPU time per request of the processes read for a row ("-" where not read)."""
    if not any(k.endswith("_cpu_us") for k in extra):
        return ""
    names = ("client", "worker", "redis")
    return " / ".join(
        f"{extra[f'{n}_cpu_us']:.0f}" if f"{n}_cpu_us" in extra else "-" for n in names
    )
