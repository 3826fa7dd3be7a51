"""Run the failure-scenario suite through `monitor backtest` and print the detection table.

    python -m bench.scenarios                      # all scenarios, markdown table on stdout
    python -m bench.scenarios --only latency --healthy-days 0.25 --failure-hours 2   # a quick look

Each failure scenario is a day of healthy traffic followed by the failure (monitor/backtest/scenarios.py).
All of them share the same healthy traffic, which the `healthy` scenario (3 days from an empty state,
evaluated in full) covers; a failure scenario is evaluated from `--lead-in` before its onset (earlier
events still build the engine's windows), so the table's false alerts are those of the healthy run plus
those raised in each lead-in. Results: <out>/summary.json and one <out>/<scenario>.json per backtest.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from monitor.backtest import scenarios as sc
from monitor.backtest.run import AlertSeries, BacktestResult, iso, result_from_json, run_backtest
from monitor.config import load_config
from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, generate, write

RANK = {"info": 0, "ticket": 1, "page": 2}
LOUD = ("page", "ticket")


@dataclass(frozen=True)
class Job:
    scenario: str
    out: Path
    config: Path
    rules: tuple[Path, ...]
    healthy_days: float
    failure_hours: float
    lead_in_s: float
    seed: int
    workers: int


def _matches(a: AlertSeries, want: sc.Expected) -> bool:
    return a.alert in want.names and all(a.labels.get(k) == v for k, v in want.labels.items())


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(spans):
        if cur_end is None or s > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def summarize(scenario: sc.Scenario, gen: sc.Generated, result: BacktestResult) -> dict[str, Any]:
    h = result.history
    end = h.end + h.step
    onset = gen.onset if gen.onset is not None else end
    false = [a for a in result.alerts if a.severity in LOUD and a.intervals[0].start < onset]
    row: dict[str, Any] = {
        "scenario": scenario.name, "description": scenario.description,
        "evaluated_from": iso(h.start), "onset": iso(onset) if gen.onset else None, "end": iso(end),
        "false_alerts": [{"alert": a.alert, "severity": a.severity, "labels": a.labels,
                          "first": iso(a.intervals[0].start)} for a in false],
        "timings_seconds": result.to_json()["timings_seconds"],
    }
    if gen.onset is None:
        return row
    after = [a for a in result.alerts if any(i.end is None or i.end > onset for i in a.intervals)]
    expected = []
    for want in scenario.expected:
        hits = [a for a in after if _matches(a, want)]
        at_severity = [a for a in hits if RANK.get(a.severity, -1) >= RANK[want.severity]]
        firsts = [i.start for a in at_severity for i in a.intervals if i.start >= onset]
        spans = [(max(i.start, onset), i.end if i.end is not None else end) for a in at_severity for i in a.intervals]
        best = max((a.severity for a in hits), key=lambda s: RANK.get(s, -1), default=None)
        first = min(firsts) if firsts else None
        expected.append({
            "alert": " or ".join(want.names), "labels": want.labels, "intended_severity": want.severity,
            "fired_as": sorted({f"{a.alert}[{a.severity}]" for a in hits}),
            "detected": bool(at_severity), "highest_severity": best,
            "minutes_from_onset": round((first - onset) / 60, 1) if first is not None else None,
            "minutes_from_enough_labels": (round((first - gen.enough_labels_at) / 60, 1)
                                           if first is not None and gen.enough_labels_at is not None else None),
            "enough_labels_minutes_after_onset": (round((gen.enough_labels_at - onset) / 60, 1)
                                                  if gen.enough_labels_at is not None else None),
            "firing_share": round(_union_seconds(spans) / (end - onset), 3),
        })
    row["expected"] = expected
    row["other_alerts_after_onset"] = sorted({f"{a.alert}[{a.severity}]" for a in after
                                              if not any(_matches(a, w) for w in scenario.expected)})
    return row


def run_one(job: Job, reuse: bool = False) -> dict[str, Any]:
    """One scenario's backtest and its table row; with `reuse`, the row is computed from the backtest
    JSON a previous run left in the output directory (if any)."""
    scenario = next(s for s in (*sc.SCENARIOS, sc.HEALTHY) if s.name == job.scenario)
    began = time.monotonic()
    gen = sc.generate(scenario, healthy_days=job.healthy_days, failure_hours=job.failure_hours, seed=job.seed)
    start = gen.onset - job.lead_in_s if gen.onset is not None else None
    saved = job.out / f"{scenario.name}.json"
    try:
        if reuse and saved.exists():
            result = result_from_json(orjson.loads(saved.read_bytes()))
        else:
            result = run_backtest(load_config(job.config), gen.predictions, gen.ground_truth,
                                  rule_files=list(job.rules), start=start, end=gen.end, workers=job.workers)
            saved.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
    except Exception as exc:  # one failed backtest must not lose the others' rows
        print(f"{scenario.name}: FAILED: {exc}", file=sys.stderr, flush=True)
        return {"scenario": scenario.name, "description": scenario.description, "error": str(exc)[:500],
                "false_alerts": [], "expected": [{"alert": " or ".join(w.names), "labels": w.labels,
                                                  "intended_severity": w.severity,
                                                  "detected": False, "highest_severity": None,
                                                  "minutes_from_onset": None, "minutes_from_enough_labels": None,
                                                  "firing_share": 0.0} for w in scenario.expected]}
    row = summarize(scenario, gen, result)
    row["events"] = {"predictions": len(gen.predictions), "ground_truth": len(gen.ground_truth)}
    row["wall_seconds"] = round(time.monotonic() - began, 1)
    print(f"{scenario.name}: {row['wall_seconds']}s", file=sys.stderr, flush=True)
    return row


def _cell(value: object) -> str:
    return "—" if value is None else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | expected alert | detected | severity (intended) | min from onset | "
             "min from enough labels | firing share | false alerts | other alerts after onset |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        false = len(row["false_alerts"])
        if "error" in row:
            lines.append(f"| {row['scenario']} ({row['description']}) | backtest failed: {row['error'][:80]} "
                         "| — | — | — | — | — | — | — |")
            continue
        if "expected" not in row:
            names = ", ".join(sorted({f"{a['alert']} ({a['severity']})" for a in row["false_alerts"]}))
            lines.append(f"| {row['scenario']} ({row['description']}) | none | — | — | — | — | — | "
                         f"{false}{': ' + names if names else ''} | — |")
            continue
        for e in row["expected"]:
            labels = ",".join(f"{k}={v}" for k, v in e["labels"].items())
            lines.append(
                f"| {row['scenario']} ({row['description']}) | {e['alert']}{'{' + labels + '}' if labels else ''} | "
                f"{'yes' if e['detected'] else 'no'} | {_cell(e['highest_severity'])} ({e['intended_severity']}) | "
                f"{_cell(e['minutes_from_onset'])} | {_cell(e['minutes_from_enough_labels'])} | "
                f"{e['firing_share']:.0%} | {false} | {', '.join(row.get('other_alerts_after_onset', [])) or 'none'} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> dict[str, bool]:
    failures = [r for r in rows if "expected" in r]
    collapse = [e for r in failures if r["scenario"] == "label_collapse" for e in r["expected"]]
    return {
        "every failure detected at its intended severity": all(e["detected"] for r in failures for e in r["expected"]),
        "no page or ticket on healthy traffic (warm-up and lead-ins included)": all(
            not r["false_alerts"] for r in rows),
        "every expected alert firing for at least half of the failure": all(
            e["firing_share"] >= 0.5 for r in failures for e in r["expected"]),
        "normal-volume collapse paged within 20 minutes": bool(collapse) and all(
            e["detected"] and e["minutes_from_onset"] is not None and e["minutes_from_onset"] <= 20 for e in collapse),
    }


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="bench/scenarios-out", show_default=True)
@click.option("--only", multiple=True, help="Run only these scenarios (repeatable).")
@click.option("--healthy-days", type=float, default=1.0, show_default=True,
              help="Healthy traffic before each failure.")
@click.option("--failure-hours", type=float, default=6.0, show_default=True)
@click.option("--healthy-run-days", type=float, default=3.0, show_default=True,
              help="Length of the healthy scenario (from an empty state).")
@click.option("--lead-in", "lead_in_h", type=float, default=2.0, show_default=True,
              help="Hours evaluated before each onset.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Scenarios run at once.")
@click.option("--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="Processes evaluating the engine of one backtest (consecutive chunks of its steps).")
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--reuse", is_flag=True, help="Take each scenario's backtest from <out>/<scenario>.json when "
                                          "present (re-summarise without re-running).")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False),
              help="Use these rule files instead of generating them for the scenario config.")
def main(out: str, only: tuple[str, ...], healthy_days: float, failure_hours: float, healthy_run_days: float,
         lead_in_h: float, jobs: int, workers: int, seed: int, reuse: bool, rules_dir: str | None) -> None:
    """Run the scenario suite; print the markdown table and which targets are met."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = sc.write_config(out_dir / "config", seed)
    if rules_dir:
        rules = (Path(rules_dir) / RECORDING_FILE, Path(rules_dir) / ALERTS_FILE)
    else:
        files = generate(load_config(config), source="the scenario config")
        write({k: v for k, v in files.items() if k in (RECORDING_FILE, ALERTS_FILE)}, out_dir / "rules")
        rules = (out_dir / "rules" / RECORDING_FILE, out_dir / "rules" / ALERTS_FILE)
    names = [s.name for s in (sc.HEALTHY, *sc.SCENARIOS)]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(names)}",
                                 param_hint="--only")
    chosen = list(dict.fromkeys(only)) if only else names  # --only's order is the run order
    work = [Job(n, out_dir, config, rules, healthy_run_days if n == "healthy" else healthy_days, failure_hours,
                lead_in_h * 3600, seed, workers if jobs == 1 else 1) for n in chosen]
    began = time.monotonic()
    settings = {"healthy_days": healthy_days, "failure_hours": failure_hours, "healthy_run_days": healthy_run_days,
                "lead_in_hours": lead_in_h, "seed": seed, "rules": [str(r) for r in rules]}
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        # Rewritten after every scenario, so a long run's finished rows are readable before it ends.
        rows.append(row)
        rows.sort(key=lambda r: names.index(r["scenario"]))
        summary = {"rows": rows, "targets": targets(rows), "wall_seconds": round(time.monotonic() - began, 1),
                   "settings": settings, "complete": len(rows) == len(work)}
        (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        (out_dir / "table.md").write_text(markdown(rows) + "\n")

    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for future in as_completed([pool.submit(run_one, j, reuse) for j in work]):
                record(future.result())
    else:
        for j in work:
            record(run_one(j, reuse))
    met = targets(rows)
    click.echo(markdown(rows))
    click.echo("")
    for target, ok in met.items():
        click.echo(f"- {'met' if ok else 'NOT met'}: {target}")
    click.echo(f"\n({time.monotonic() - began:.0f} s)", err=True)


if __name__ == "__main__":
    main()
