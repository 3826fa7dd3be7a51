"""`monitor report`: the HTML debug view. Sections, numbers equal to the figures, no URL, no raw event
contents, escaping, and a real headless Chromium that must render the charts without a console message."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from monitor.config import MonitorConfig, load_config, parse_config
from monitor.replay import read_lines, run_replay
from monitor.report import html as fmt
from monitor.report.build import NoUsableEvents, make_report, report_view
from monitor.report.html import render
from monitor.report.versions import compare
from monitor.simulate import TrafficSpec, generate
from tests.conftest import ROOT, imported_by_cli

EXAMPLE = ROOT / "monitor" / "examples"
CHROMIUM = Path("/usr/bin/chromium")
M, V = "moderation", "v7"
LABELS = ("violence", "hate", "spam", "nudity", "self_harm", "harassment")


def monitor(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True,
                          check=check, cwd=ROOT, timeout=120)


EVIDENTLY_TEST = "test_evidently_embed_is_sandboxed_and_renders"


@pytest.fixture(scope="module", autouse=True)
def evidently_report(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], Path] | None]:
    """`monitor report --evidently`, started with the module when its test is going to run: the command
    spends about 20 s importing and running Evidently on one core, which now overlaps the module's other
    tests instead of preceding that test's Chromium run. The test still waits for it and checks its exit."""
    wanted = (any(item.name == EVIDENTLY_TEST for item in request.session.items) and CHROMIUM.exists()
              and importlib.util.find_spec("evidently") is not None)
    if not wanted:
        yield None
        return
    tmp = tmp_path_factory.mktemp("evidently")
    out = tmp / "r.html"
    with (tmp / "stderr").open("w") as stderr:  # a file, not a pipe nobody reads until the test runs
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "report", "--evidently", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=ROOT)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def example_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    res = monitor("report", "-o", str(out))
    assert "wrote" in res.stderr
    return out


@pytest.fixture(scope="module")
def example_figures(example_config):  # type: ignore[no-untyped-def]
    _, figures = run_replay(example_config, read_lines(EXAMPLE / "predictions.jsonl"),
                            read_lines(EXAMPLE / "ground_truth.jsonl"))
    return figures


class Cells(HTMLParser):
    """(window, metric, label) -> text of every element carrying data-metric, inside its window block."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self.svgs = 0
        self._stack: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[list[object]] = []  # [key, depth, text parts]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.svgs += tag == "svg"
        if tag in ("input", "br", "meta", "circle", "line", "rect", "polyline", "path"):
            return
        self._stack.append((tag, a))
        if a.get("data-metric"):
            window = next((str(x.get("data-window")) for _, x in reversed(self._stack) if x.get("data-window")), "")
            self._open.append([(window, a["data-metric"], a.get("data-label") or ""), len(self._stack), []])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("input", "br", "meta", "circle", "line", "rect", "polyline", "path"):
            return
        if self._open and self._open[-1][1] == len(self._stack):
            key, _, parts = self._open.pop()
            self.cells.setdefault(key, "".join(parts).strip())  # type: ignore[arg-type]
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        in_svg = any(t == "svg" for t, _ in self._stack)
        for o in self._open:
            if not in_svg:
                o[2].append(data)  # type: ignore[union-attr]


def cells_of(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


# --- content -----------------------------------------------------------------------------------------------

def test_example_report_has_every_section(example_report: Path) -> None:
    html = example_report.read_text()
    for anchor in ("quality", "calibration", "drift", "slo", "ground-truth", "health"):
        assert f'id="{M}-{anchor}"' in html, anchor
    assert "Evaluated at <b>2026-11-20 11:59:54 UTC</b>" in html
    assert "Default window: <b>1d</b>" in html
    # Every window with data is selectable; the default one is checked.
    assert re.findall(r'aria-label="window (\w+)"', html) == ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    assert re.search(r'aria-label="window 1d" checked', html)
    for label in LABELS:
        assert f"reliability diagram {label}, last 1d" in html
        assert f"score distribution {label}, last 1d" in html
    for title in ("feature PSI per window", "score PSI per window", "burn rate per window, violence-recall",
                  "burn rate per window, spam-precision", "ground-truth delay histogram"):
        assert f'aria-label="{title}"' in html
    assert 'class="pill fire">FIRING: page_fast, page_slow, ticket_slow' in html  # the example's collapse
    assert "micro F1" in html and "hamming loss" in html and "subset accuracy" in html


def test_table_numbers_equal_the_figures(example_report: Path, example_figures) -> None:  # type: ignore[no-untyped-def]
    cells = cells_of(example_report.read_text()).cells
    f = example_figures
    for window in ("1d", "2h"):
        for label in LABELS:
            key = (M, V, label, window)
            for metric in ("mlmon_label_precision", "mlmon_label_recall", "mlmon_label_f1", "mlmon_label_ece",
                           "mlmon_score_psi", "mlmon_estimated_label_precision", "mlmon_estimated_label_recall"):
                value = f.by_name(metric).get(key)
                text = cells[(window, metric, label)]
                assert text.startswith(fmt.ratio(value) if value is not None else fmt.DASH), (metric, key, text)
            lo, hi = f.by_name("mlmon_label_f1_lower").get(key), f.by_name("mlmon_label_f1_upper").get(key)
            if lo is not None:
                assert f"{fmt.ratio(lo)}–{fmt.ratio(hi)}" in cells[(window, "mlmon_label_f1", label)]
            assert cells[(window, "mlmon_label_support", label)] == fmt.count(f.by_name("mlmon_label_support")[key])
            rate = f.by_name("mlmon_predicted_positive_rate")[key]
            ref = f.by_name("mlmon_reference_positive_rate")[(M, label)]
            assert cells[(window, "mlmon_predicted_positive_rate", label)] == f"{rate:.1%} · {ref:.1%}"
        for metric in ("mlmon_micro_f1", "mlmon_macro_f1", "mlmon_hamming_loss", "mlmon_subset_accuracy"):
            assert cells[(window, metric, "")] == fmt.ratio(f.by_name(metric)[(M, V, window)])
    # Spot checks with the literal numbers, so a formatter bug that changes both sides still fails.
    assert cells[("1d", "mlmon_label_f1", "spam")].startswith("0.971")
    assert cells[("2h", "mlmon_label_recall", "violence")].startswith("0.000")  # the collapse
    assert cells[("1d", "mlmon_label_coverage", "")] == "78.2%"
    remaining = f.by_name("mlmon_error_budget_remaining")[(M, "violence", "violence-recall")]
    assert cells[("", "mlmon_error_budget_remaining", "")] == fmt.pct(remaining) == "-155.4%"


def test_drift_and_slo_tables_equal_the_figures(example_report: Path, example_figures) -> None:  # type: ignore[no-untyped-def]
    html = example_report.read_text()
    psi = example_figures.by_name("mlmon_feature_psi")
    drift = html[html.index('<table class="drift"'):]
    drift = drift[:drift.index("</table>")]
    row = drift[drift.index("PSI · text_length"):]
    row = row[:row.index("</tr>")]
    shown = re.findall(r">([\d.]+|<span[^>]*>—</span>)</td>", row)
    assert shown[0].endswith("—</span>")  # 5m: below the sample-size guard, absent, not 0
    assert shown[1:] == [fmt.ratio(psi[(M, V, "text_length", w)]) for w in ("30m", "1h", "2h", "6h", "1d", "3d", "30d")]
    assert 'class="sig"' in row and 'class="mod"' in row  # 2.38 significant, 0.130 moderate
    burn = example_figures.by_name("mlmon_error_budget_burn_rate")
    tier = html[html.index('data-tier="page_slow"'):]
    tier = tier[:tier.index("</tr>")]
    assert fmt.burn(burn[(M, "violence", "violence-recall", "6h")]) in tier
    assert "would fire" in tier and "3.83×" in tier
    page_fast = html[html.index('data-tier="page_fast"'):]
    row = page_fast[:page_fast.index("</tr>")]
    assert "would fire" in row and "1h burn 6.67× &gt; 6.10×" in row  # 52 labelled events >= min_events 50


def test_no_url_script_or_external_resource(example_report: Path) -> None:
    html = example_report.read_text()
    assert not re.search(r"""(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "<iframe" not in html.lower()
    assert "url(" not in html and "@import" not in html


def test_window_option(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    monitor("report", "--window", "1h", "-o", str(out))
    assert re.search(r'aria-label="window 1h" checked', out.read_text())
    res = monitor("report", "--window", "7m", "-o", str(out), check=False)
    assert res.returncode == 2 and "'7m' is not a configured window" in res.stderr


def test_at_option_reports_an_earlier_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    monitor("report", "--config", str(EXAMPLE / "config.yaml"), "--predictions", str(EXAMPLE / "predictions.jsonl"),
            "--ground-truth", str(EXAMPLE / "ground_truth.jsonl"), "--at", "2026-11-20T06:00:00Z", "-o", str(out))
    html = out.read_text()
    assert "Evaluated at <b>2026-11-20 06:00:00 UTC</b>" in html
    # Before the collapse at 08:00 the example's model meets its 0.85 violence-recall target: nothing fires.
    assert re.findall(r"FIRING: ([\w, ]+)<", html) == []
    assert "violence-recall" in html


def _ece_warnings(html: str) -> dict[str, set[str]]:
    """Per window block, the labels whose ECE cell carries the calibration warning."""
    out: dict[str, set[str]] = {}
    for block in re.split(r'(?=data-window=")', html)[1:]:
        window = block[len('data-window="'):block.index('"', len('data-window="'))]
        warned = re.findall(r'<td data-metric="mlmon_label_ece" data-label="([^"]+)" class="warn"', block)
        out.setdefault(window, set()).update(warned)
    return out


def test_report_judges_with_the_options_of_the_users_rules(tmp_path: Path, example_figures) -> None:  # type: ignore[no-untyped-def]
    """`--rules` takes the options from the header of the rules `monitor rules` wrote: here a calibration
    threshold of 0.03 instead of 0.12, which must decide every ECE cell's warning."""
    monitor("rules", "--ece-threshold", "0.03", "-o", str(tmp_path / "rules"))
    out = tmp_path / "r.html"
    monitor("report", "--rules", str(tmp_path / "rules"), "-o", str(out))
    html = out.read_text()
    default = monitor("report", "-o", "-").stdout
    ece = example_figures.by_name("mlmon_label_ece")
    for threshold, page in ((0.03, html), (0.12, default)):
        warned = _ece_warnings(page)
        assert warned, "no window block found"
        for window, labels in warned.items():
            assert labels == {label for label in LABELS if ece.get((M, V, label, window), 0.0) > threshold}, window
    assert _ece_warnings(html) != _ece_warnings(default)

    (tmp_path / "hand.yml").write_text("groups: []\n")
    res = monitor("report", "--rules", str(tmp_path / "hand.yml"), "-o", str(out), check=False)
    assert res.returncode == 2 and "not generated by `monitor rules`" in res.stderr


def test_report_command_stays_light() -> None:
    assert imported_by_cli(["report", "--help"], ("numpy", "evidently", "pandas", "faust", "scipy")) == []


# --- hostile names, multiclass, no raw event contents --------------------------------------------------------

EVIL = '<img src=x onerror="alert(1)">'
SECRET = "SECRET-feature-value-8127"
KIND = '"><kind'


def _multiclass_stream(n: int = 600) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(5)
    classes = ["a&b", EVIL, "plain"]
    preds, truth = [], []
    for i in range(n):
        ts = 1_790_000_000 + i * 30
        raw = rng.dirichlet([1, 1, 1])
        actual = int(rng.choice(3, p=raw))
        preds.append(json.dumps({"prediction_id": f"pid-{SECRET}-{i}", "model": "router", "timestamp": ts,
                                 "scores": dict(zip(classes, raw.round(4).tolist(), strict=True)),
                                 "model_version": "v<2>",
                                 "features": {KIND: SECRET if i % 2 else "other", "size": float(i % 50)}}).encode())
        if i % 4:
            truth.append(json.dumps({"prediction_id": f"pid-{SECRET}-{i}", "model": "router",
                                     "timestamp": ts + 120, "labels": [classes[actual]]}).encode())
    return preds, truth


def test_multiclass_and_hostile_names_are_escaped(tmp_path: Path) -> None:
    ref = tmp_path / "ref.jsonl"
    preds, truth = _multiclass_stream()
    ref.write_bytes(b"\n".join(preds[:300]) + b"\n")
    config = parse_config({
        "windows": ["5m", "1h", "6h", "1d"],
        "models": [{"name": "router", "task": "multiclass", "labels": ["a&b", EVIL, "plain"],
                    "reference": str(ref), "features": {"numeric": ["size"], "categorical": [KIND]},
                    "slos": [{"label": EVIL, "objective": "recall", "target": 0.5, "severity": "page",
                              "period": "1d"}]}],
    })
    made = make_report(config, preds, truth)
    view, figures = made.view, made.figures
    html = render(view, headline=made.headline, timeline=made.timeline)
    assert 'aria-label="timeline quality &lt;img src=x onerror=&quot;alert(1)&quot;&gt;"' in html
    assert f'id="{M}-versions"' not in html and 'id="router-versions"' in html
    assert EVIL not in html and "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "a&amp;b" in html and KIND not in html and "&quot;&gt;&lt;kind" in html and "v&lt;2&gt;" in html
    assert SECRET not in html and "pid-" not in html  # no raw event contents, not even ids or values
    assert 'aria-label="confusion matrix, last 1d"' in html
    cells = cells_of(html).cells
    accuracy = figures.by_name("mlmon_accuracy")[("router", "v<2>", "1d")]
    assert cells[("1d", "mlmon_accuracy", "")] == fmt.ratio(accuracy)
    assert "subset accuracy" not in html  # multiclass shows accuracy + confusion instead
    assert cells_of(html).svgs > 20


def test_empty_stream_is_an_error_not_an_epoch_report() -> None:
    config = parse_config({"models": [{"name": "m", "labels": ["x"], "task": "binary"}]})
    with pytest.raises(NoUsableEvents, match="inputs are empty"):
        report_view(config, [], [])


def test_report_of_only_rejected_events_fails_loudly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"not json\n{"prediction_id": "p1", "model": "nope", "timestamp": 1, "scores": {}}\n[]\n')
    out = tmp_path / "r.html"
    res = monitor("report", "--config", str(EXAMPLE / "config.yaml"), "--predictions", str(bad),
                  "--ground-truth", str(bad), "-o", str(out), check=False)
    assert res.returncode == 1, res.stderr
    # Told as `monitor replay` tells it: per file, by reason, then why nothing could be evaluated.
    assert "bad.jsonl: 3 of 3 prediction events rejected" in res.stderr
    assert "bad.jsonl: 3 of 3 ground-truth events rejected" in res.stderr
    assert "invalid_json: " in res.stderr and "unknown_model: " in res.stderr
    assert "nothing usable in" in res.stderr and "all 3 prediction events were rejected" in res.stderr
    assert not out.exists() and "1970" not in res.stderr + res.stdout
    # Nothing at or before --at is no report either.
    res = monitor("report", "--at", "2020-01-01T00:00:00Z", "-o", str(out), check=False)
    assert res.returncode == 1 and "no usable event at or before --at 2020-01-01 00:00:00 UTC" in res.stderr
    assert not out.exists()


def test_some_rejected_events_are_reported_on_stderr(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_bytes((EXAMPLE / "predictions.jsonl").read_bytes() + b"{broken\n")
    out = tmp_path / "r.html"
    res = monitor("report", "--config", str(EXAMPLE / "config.yaml"), "--predictions", str(preds),
                  "--ground-truth", str(EXAMPLE / "ground_truth.jsonl"), "-o", str(out))
    assert "p.jsonl: 1 of 8,001 prediction events rejected" in res.stderr
    assert "invalid_json: " in res.stderr and "first at line 8001" in res.stderr
    assert "1 of 14,260 events rejected as invalid, listed under 'Invalid input' in the report" in res.stderr
    assert "wrote" in res.stderr and out.exists()


# --- headline, timeline, versions -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_lines() -> tuple[list[bytes], list[bytes]]:
    return read_lines(EXAMPLE / "predictions.jsonl"), read_lines(EXAMPLE / "ground_truth.jsonl")


@pytest.fixture(scope="module")
def example_made(example_config, example_lines):  # type: ignore[no-untyped-def]
    return make_report(example_config, *example_lines)


def _hm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def test_timeline_points_equal_fresh_replays_at_those_times(example_config, example_lines, example_made) -> None:  # type: ignore[no-untyped-def]
    tl = example_made.timeline
    assert tl.window == "1h" and tl.step == 600 and len(tl.times) == 73
    assert _hm(tl.times[0]) == "00:00" and tl.times[-1] == example_made.view.at
    mt = tl.models[M]
    picks = [k for k, t in enumerate(tl.times) if _hm(t) in ("05:10", "08:30", "09:50")] + [len(tl.times) - 1]
    assert len(picks) == 4
    for k in picks:
        _, fresh = run_replay(example_config, *example_lines, at=tl.times[k])
        vs = mt.versions[V]
        for label in LABELS:
            key = (M, V, label, "1h")
            ls = vs.labels[label]
            for name in ("precision", "recall", "f1"):
                for suffix in ("", "_lower", "_upper"):
                    assert getattr(ls, name + suffix)[k] == fresh.by_name(f"mlmon_label_{name}{suffix}").get(key), \
                        (k, label, name + suffix)
            assert ls.positive_rate[k] == fresh.by_name("mlmon_predicted_positive_rate").get(key)
            assert ls.score_psi[k] == fresh.by_name("mlmon_score_psi").get(key)
        for feature, series in vs.feature_psi.items():
            assert series[k] == fresh.by_name("mlmon_feature_psi").get((M, V, feature, "1h")), (k, feature)
        assert vs.cooccurrence_psi[k] == fresh.by_name("mlmon_label_cooccurrence_drift").get((M, V, "1h"))
        assert vs.predictions[k] == fresh.by_name("mlmon_window_predictions")[(M, V, "1h")]
        for slo, series in mt.slos.items():
            label = "violence" if slo == "violence-recall" else "spam"
            for w, values in series.burn.items():
                assert values[k] == fresh.by_name("mlmon_error_budget_burn_rate").get((M, label, slo, w)), (k, slo, w)
                assert series.events[w][k] == fresh.by_name("mlmon_slo_events")[(M, label, slo, w)]
    # The last point is the report's own evaluation.
    assert mt.versions[V].labels["violence"].recall[-1] == example_made.figures.by_name("mlmon_label_recall")[
        (M, V, "violence", "1h")]


def _violence_recall_oracle(preds: list[bytes], truths: list[bytes], at: float) -> float:
    """Recall of violence over the joined events observed in the 1-minute buckets of the hour ending at `at`,
    from the raw JSON and scikit-learn (each example prediction has at most one ground truth)."""
    from sklearn.metrics import recall_score

    scores = {}
    for raw in preds:
        e = json.loads(raw)
        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        if ts <= at:
            scores[e["prediction_id"]] = (ts, e["scores"]["violence"])
    y_true, y_pred = [], []
    current = int(at // 60)
    for raw in truths:
        e = json.loads(raw)
        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        labels = e["labels"]
        if ts > at or e["prediction_id"] not in scores or (isinstance(labels, dict) and "violence" not in labels):
            continue
        p_ts, score = scores[e["prediction_id"]]
        if current - 60 < int(max(p_ts, ts) // 60) <= current:
            y_true.append(bool(labels["violence"]) if isinstance(labels, dict) else "violence" in labels)
            y_pred.append(score >= 0.7)
    return float(recall_score(y_true, y_pred))


def test_timeline_shows_when_recall_broke_and_inputs_drifted(example_lines, example_made) -> None:  # type: ignore[no-untyped-def]
    tl = example_made.timeline
    vs = tl.models[M].versions[V]
    by_time = {_hm(t): k for k, t in enumerate(tl.times)}
    recall = vs.labels["violence"].recall
    # Against the raw events and scikit-learn, before and after the 08:00 degradation.
    for hm in ("07:30", "09:30"):
        k = by_time[hm]
        assert recall[k] == pytest.approx(_violence_recall_oracle(*example_lines, tl.times[k]), abs=1e-12)
    before = [recall[by_time[f"{h:02d}:{mm}0"]] for h in range(2, 8) for mm in range(6)]
    assert min(before) > 0.8  # healthy: the 0.85 target is met most of the time
    assert max(recall[by_time["09:10"]:]) < 0.3  # broken
    psi = vs.feature_psi["text_length"]
    assert max(x for x in psi[:by_time["09:00"] + 1] if x is not None) < 0.1
    assert min(psi[by_time["09:50"]:]) > 0.25  # significant from about 40 minutes into the drift
    # The headline dates both onsets from the same series.
    h = example_made.headline
    firing = {t.name: t.since for s in h.slos for t in s.firing}
    assert set(firing) == {"page_fast", "page_slow", "ticket_slow"}
    assert "08:00" <= _hm(firing["ticket_slow"]) <= "09:30"
    findings = {(f.kind, f.subject): f for f in h.findings}
    assert "08:00" <= _hm(findings[("label collapse", "violence")].since) <= "09:30"
    assert "09:00" <= _hm(findings[("feature drift", "text_length")].since) <= "10:00"
    assert findings[("feature drift", "text_length")].value == example_made.figures.by_name("mlmon_feature_psi")[
        (M, V, "text_length", "1h")]


def test_headline_leads_the_page_with_the_breached_slo(example_report: Path, example_figures) -> None:  # type: ignore[no-untyped-def]
    html = example_report.read_text()
    top = html[:html.index('id="moderation-quality"')]
    assert top.index('id="headline"') < top.index('id="moderation-timeline"') < top.index('id="moderation-versions"')
    headline = html[html.index('id="headline"'):html.index("</section>", html.index('id="headline"'))]
    tile = headline[headline.index('data-slo="violence-recall"'):]
    assert 'data-state="breached"' in tile[:80]
    recall_30d = example_figures.by_name("mlmon_label_recall")[(M, V, "violence", "30d")]  # one version: all of it
    assert f'data-value="slo-measured">{fmt.ratio(recall_30d)}<' in tile and fmt.ratio(recall_30d) == "0.617"
    assert ">-155.4%<" in tile and "target ≥ 0.85 over 30d" in tile
    for tier in ("page_fast", "page_slow", "ticket_slow"):
        assert f'data-firing-tier="{tier}"' in tile
    assert 'data-firing-tier="ticket_fast"' not in tile
    assert re.search(r'data-firing-tier="ticket_slow">.*?since \d\d:\d\d UTC \(\d+h \d\dm before the evaluation\)',
                     tile)
    assert 'data-kind="label collapse" data-subject="violence"' in headline
    assert 'data-kind="feature drift" data-subject="text_length"' in headline
    assert "spam-precision" in headline and "SLOs met" in headline
    for label in LABELS:
        assert f'aria-label="timeline quality {label}"' in html and f'aria-label="timeline score PSI {label}"' in html
    assert 'aria-label="timeline burn rate violence-recall"' in html and 'aria-label="timeline feature PSI"' in html


def test_headline_says_so_when_nothing_is_wrong(example_config, example_lines) -> None:  # type: ignore[no-untyped-def]
    made = make_report(example_config, *example_lines, at=datetime(2026, 11, 20, 6, tzinfo=UTC).timestamp())
    html = render(made.view, headline=made.headline, timeline=made.timeline)
    assert made.headline.problems == 0 and 'data-problems="0"' in html and "No problem found" in html


def _two_versions() -> tuple[MonitorConfig, list[bytes], list[bytes]]:
    """v7 as in the example; v8 misses most violence (the degradation from its first event) and serves a
    third of the traffic."""
    start = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    a = generate(TrafficSpec(n=2400, start=start, rate=1.0, mean_delay=600.0, partial_share=0.0, seed=31))
    b = generate(TrafficSpec(n=1200, start=start + 0.5, rate=0.5, mean_delay=600.0, partial_share=0.0, seed=32,
                             version="v8", degrade_at=0.0))
    preds = sorted(a[0] + b[0])
    truths = sorted(a[1] + b[1])
    config = load_config(EXAMPLE / "config.yaml")
    return config, [raw for _, raw in preds], [raw for _, raw in truths]


def test_versions_side_by_side_match_sklearn_and_scipy() -> None:
    from scipy.stats import chi2_contingency
    from sklearn.metrics import precision_score, recall_score

    config, preds, truths = _two_versions()
    made = make_report(config, preds, truths)
    m = made.view.models[0]
    cmp = compare(m, "30d")
    assert cmp.versions == ["v7", "v8"]  # the baseline has the most predictions
    assert cmp.predictions == {"v7": 2400, "v8": 1200} and cmp.share("v8") == pytest.approx(1 / 3)
    # Oracle: join the raw events by id (one truth per prediction here, no partial labels).
    truth = {json.loads(r)["prediction_id"]: json.loads(r)["labels"] for r in truths}
    rows = {(r.label, r.metric): r for r in cmp.rows}
    raw_p = {}
    for version in ("v7", "v8"):
        joined = [(e["scores"], truth[e["prediction_id"]]) for e in map(json.loads, preds)
                  if e["model_version"] == version and e["prediction_id"] in truth]
        for label in LABELS:
            thr = 0.7 if label == "violence" else 0.5
            y_true = [label in t for _, t in joined]
            y_pred = [s[label] >= thr for s, _ in joined]
            for metric, score in (("precision", precision_score), ("recall", recall_score)):
                cells = {c.version: c for c in rows[(label, metric)].cells}
                want = score(y_true, y_pred, zero_division=np.nan)  # undefined (0/0) is shown as such
                got_value = cells[version].interval.value
                assert (got_value is None) if np.isnan(want) else got_value == pytest.approx(want, abs=1e-12), \
                    (version, label, metric)
            tp = sum(t and p for t, p in zip(y_true, y_pred, strict=True))
            for metric, n in (("precision", sum(y_pred)), ("recall", sum(y_true))):
                raw_p.setdefault((label, metric), []).append((tp, n))
    # p-values: Pearson's chi-squared on the 2x2 table (no continuity correction) is the pooled z-test.
    expected: dict[tuple[str, str], float] = {}
    for key, ((s1, n1), (s2, n2)) in raw_p.items():
        if 0 < s1 + s2 < n1 + n2:
            expected[key] = float(chi2_contingency([[s1, n1 - s1], [s2, n2 - s2]], correction=False).pvalue)
    got = {key: rows[key].cells[1].p for key in raw_p}
    assert {k for k, p in got.items() if p is not None} == set(expected)
    for key, p in expected.items():
        assert got[key] == pytest.approx(p, rel=1e-9, abs=1e-300), key
    # Benjamini-Hochberg by hand: sort, scale by m/rank, running minimum from the top.
    keys = sorted(expected, key=lambda k: expected[k])
    q, running = {}, 1.0
    for rank in range(len(keys), 0, -1):
        running = min(running, expected[keys[rank - 1]] * len(keys) / rank)
        q[keys[rank - 1]] = running
    for key in expected:
        assert rows[key].cells[1].q == pytest.approx(q[key], rel=1e-9)
        assert rows[key].cells[1].significant == (q[key] < 0.05)
    assert rows[("violence", "recall")].cells[1].significant  # the degraded version differs
    assert not rows[("spam", "precision")].cells[1].significant
    html = render(made.view, headline=made.headline, timeline=made.timeline)
    block = html[html.index('id="moderation-versions"'):]
    block = block[block.index('data-window="30d"'):]
    block = block[:block.index("</table>")]
    assert re.search(r'<td class="differs" data-version="v8" data-metric="recall" data-label="violence">', block)
    assert "2,400 predictions (66.7%)" in block and "1,200 predictions (33.3%)" in block


# --- a real browser ----------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                  # Any network attempt fails fast and shows up as a console message.
                  "--host-resolver-rules=MAP * ~NOTFOUND")


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    env = {**os.environ, "LANG": "C.UTF-8"}
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB(A) PNG -> array (h, w, channels), with the stdlib and numpy only (no Pillow here)."""
    pos, idat = 8, b""
    width = height = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    out = np.zeros((height, stride), dtype=np.int64)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:
            cur = line.reshape(-1, bpp).cumsum(axis=0).reshape(-1) % 256
        elif kind == 2:
            cur = (line + prev) % 256
        else:  # average / Paeth depend on the pixel to the left: plain loop
            lb, pb, cb = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = cb[i - bpp] if i >= bpp else 0
                b = pb[i]
                if kind == 3:
                    cb[i] = (lb[i] + ((a + b) >> 1)) & 255
                else:
                    c = pb[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pbb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cb[i] = (lb[i] + (a if pa <= pbb and pa <= pc else b if pbb <= pc else c)) & 255
            cur = np.array(cb, dtype=np.int64)
        out[y], prev = cur, cur
    return out.reshape(height, width, bpp)[..., :3]


def share_of(img: np.ndarray, hex_colour: str, tolerance: int = 18) -> float:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(img - rgb).max(axis=2) <= tolerance).mean())


# Measures the laid-out page and writes the result into the DOM. Injected only into a test copy: the report
# itself has no script.
MEASURE = """<script>
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
const out = {
  headline: box(document.getElementById("headline")),
  tiles: [...document.querySelectorAll("#headline .tile")].map(box),
  status: box(document.querySelector("#headline .status")),
  timeline: [...document.querySelectorAll("svg.timeline")].map(s => ({
    label: s.getAttribute("aria-label"), box: box(s),
    lines: [...s.querySelectorAll("polyline.series")].map(p => { const b = p.getBBox(); return [b.width, b.height]; }),
    bands: s.querySelectorAll("polygon.band").length, on: s.querySelectorAll("rect.on").length})),
};
const pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


CHROMIUM_SKIP = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                   "(apt-get install chromium; scripts/test.sh installs it)")


@CHROMIUM_SKIP
def test_report_renders_in_headless_chromium(example_report: Path, tmp_path: Path) -> None:
    # The console check must be able to fail: a page with a script error shows up.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    assert any("Uncaught" in line for line in console_lines(chromium(tmp_path, "--dump-dom", bad.as_uri()).stderr))

    png = tmp_path / "report.png"
    shot = chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,2400", example_report.as_uri())
    assert png.exists(), shot.stderr[-2000:]
    assert console_lines(shot.stderr) == []
    dom = chromium(tmp_path, "--dump-dom", example_report.as_uri())
    assert console_lines(dom.stderr) == []
    assert dom.stdout.count("<svg") == example_report.read_text().count("<svg") > 100

    img = decode_png(png.read_bytes())
    assert img.shape == (2400, 1400, 3)
    assert float((img.min(axis=2) < 235).mean()) > 0.1  # not a blank page
    # The headline's tiles, the timeline's lines in the "current" blue and its PSI bands are drawn.
    assert share_of(img[:1000], "#fff6f6", 3) > 0.02  # the breached-SLO and collapse tiles, on the first screen
    assert share_of(img[:1000], "#c62828", 10) > 0.0005  # their red borders and firing pills
    assert share_of(img, "#0072B2") > 0.001
    assert share_of(img, "#fde2e2", 3) > 0.005  # significant-drift band behind the PSI lines
    assert share_of(img, "#eaf5ec", 3) > 0.002  # no-drift band


@CHROMIUM_SKIP
def test_headline_and_timeline_are_laid_out_and_drawn(example_report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(example_report.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(tmp_path, "--window-size=1400,1000", "--dump-dom", probe.as_uri())
    assert console_lines(dom.stderr) == []
    measured = json.loads(unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S).group(1)))
    _, top, width, height = measured["headline"]
    assert top < 200 and width > 1000 and height > 150 and top + measured["status"][3] < 1000  # first screen
    assert len(measured["tiles"]) == 3 and all(t[1] + 60 < 1000 and t[2] > 250 and t[3] > 100
                                               for t in measured["tiles"])
    charts = {c["label"]: c for c in measured["timeline"]}
    assert len(charts) == 2 + 3 * len(LABELS) + 2  # feature PSI, volume; per label 3; burn for the 2 SLOs
    for chart in charts.values():
        assert chart["box"][2] >= 290 and chart["box"][3] >= 120, chart["label"]
        # Gaps (undefined steps) split a series; its longest piece spans most of the 12 hours.
        assert chart["lines"] and max(w for w, _ in chart["lines"]) > 200, chart["label"]
        assert max(h for _, h in chart["lines"]) > 0, chart["label"]
    assert charts["timeline quality violence"]["bands"] >= 1  # the interval band
    assert charts["timeline quality violence"]["lines"][0][1] > 60  # recall falls across most of the height
    assert charts["timeline burn rate violence-recall"]["on"] >= 3  # strips: the tiers' conditions held
    assert charts["timeline burn rate spam-precision"]["on"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; scripts/test.sh installs it)")
def test_evidently_embed_is_sandboxed_and_renders(
        tmp_path: Path, evidently_report: tuple[subprocess.Popen[str], Path] | None) -> None:
    pytest.importorskip("evidently")
    assert evidently_report is not None
    proc, out = evidently_report
    proc.wait(timeout=120)  # `monitor report --evidently -o out`, started with the module
    assert proc.returncode == 0, (out.parent / "stderr").read_text()
    page = out.read_text()
    frames = re.findall(r'<iframe title="evidently report moderation" sandbox="allow-scripts" [^>]*srcdoc="([^"]*)"',
                        page)
    assert len(frames) == 1
    outside = page.replace(frames[0], "")
    assert "<script" not in outside and "http://" not in outside and "https://" not in outside
    doc = unescape(frames[0])
    assert not re.search(r"""<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=\s*["']?(?:https?:)?//""", doc, re.I)
    assert "last 1h (375 joined) vs joined events before the last 1h (5,884)" in page

    # Only the embed on screen. Headless virtual time does not advance timers in out-of-process frames,
    # and Chromium isolates sandboxed frames in their own process, so that isolation is off for this check.
    only = tmp_path / "only.html"
    only.write_text(page.replace("</style>", "section.model,#headline,[id$=-timeline],[id$=-versions]{display:none}"
                                            "</style>", 1))
    png = tmp_path / "evidently.png"
    shot = chromium(tmp_path, "--disable-features=IsolateSandboxedIframes", "--virtual-time-budget=20000",
                    f"--screenshot={png}", "--window-size=1400,1400", only.as_uri())
    assert console_lines(shot.stderr) == []
    img = decode_png(png.read_bytes())
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)  # evidently's distribution bars
    assert red.mean() > 0.001
