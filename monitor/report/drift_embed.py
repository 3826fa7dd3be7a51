"""Optional (`--evidently`): evidently's data-drift report on a sample of joined events, in a sandboxed iframe.

What it adds to the report's PSI charts: a second opinion from per-column statistical tests (K-S,
chi-squared, Wasserstein, chosen by evidently per column and sample size) and the drift of the *actual*
label rates, which the monitor does not compute (it tracks predicted rates). The comparison is the
window the drift alerts watch (the configured window nearest to 1h, monitor.rules.options) against the
joined events before it, or against the config's reference when that is a JSON-lines sample.

Unlike the rest of the report this embeds aggregates of raw values (histograms, category names) and
evidently's own inline JavaScript (about 4 MB). It sits in an iframe `srcdoc` with `sandbox="allow-scripts"`
(no same-origin), so its script cannot touch the report, and it loads nothing from the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import ModelConfig, MonitorConfig, format_duration
from monitor.events import BatchDecoder, Decoder, GroundTruth, Prediction
from monitor.report.svg import esc
from monitor.rules.options import RuleOptions
from monitor.rules.tiers import nearest_window

SAMPLE = 5000  # rows per side: evidently's tests and plots stay fast, and the embed stays a few MB
MIN_ROWS = 50  # below this a test of distributions says nothing
SEED = 20261120


def evidently_section(config: MonitorConfig, predictions: Sequence[bytes], ground_truth: Sequence[bytes],
                      at: float, opts: RuleOptions | None = None) -> str:
    try:
        import evidently  # noqa: F401
    except ImportError:
        return _card("<p class=\"note\">evidently is not installed (<code>pip install 'mlmon[drift]'</code>): "
                     "no embedded drift report.</p>")
    window = nearest_window(config.windows, (opts or RuleOptions()).drift_window)
    # Event objects, not the engine's columns: evidently needs the raw feature values.
    decoder = BatchDecoder(Decoder(config))
    preds = [e for e in decoder.predictions(list(predictions)) if isinstance(e, Prediction)]
    truths = [e for e in decoder.ground_truth(list(ground_truth)) if isinstance(e, GroundTruth)]
    parts = [_model_part(decoder, m, preds, truths, at, window) for m in config.models]
    return _card("".join(parts))


def _card(body: str) -> str:
    return ('<div class="card" id="evidently"><h3>evidently data-drift report (optional embed)</h3>'
            '<p class="note">Statistical drift tests on a sample of joined events: features, scores and the '
            "actual labels. This section holds aggregates of raw feature values (histograms, category names) "
            "and evidently's inline script, isolated in a sandboxed frame.</p>" + body + "</div>")


def _model_part(decoder: BatchDecoder, m: ModelConfig, preds: list[Prediction], truths: list[GroundTruth], at: float,
                window: int) -> str:
    latest: dict[str, GroundTruth] = {}
    for t in truths:
        if t.model == m.name and t.ts <= at and (t.prediction_id not in latest or t.ts >= latest[t.prediction_id].ts):
            latest[t.prediction_id] = t
    start = at - window
    current: list[dict[str, Any]] = []
    older: list[dict[str, Any]] = []
    for p in preds:
        gt = latest.get(p.prediction_id)
        if p.model != m.name or gt is None or p.ts > at:
            continue
        (current if p.ts > start else older).append(_row(m, p, gt))
    reference, against = older, f"joined events before the last {format_duration(window)}"
    sample = _reference_sample(decoder, m)
    if sample is not None:
        reference, against = [_row(m, p, None) for p in sample], "the reference sample in the config"
    title = f"{m.name}: last {format_duration(window)} ({len(current):,} joined) vs {against} ({len(reference):,})"
    if len(current) < MIN_ROWS or len(reference) < MIN_ROWS:
        return f"<h4>{esc(title)}</h4><p class=\"note\">Too few joined events for a comparison (need {MIN_ROWS}).</p>"
    doc = _run(m, _sample(reference), _sample(current))
    return (f"<h4>{esc(title)}</h4>"
            f'<iframe title="{esc("evidently report " + m.name)}" sandbox="allow-scripts" '
            f'style="width:100%;height:1100px;border:1px solid #dde1e6;border-radius:6px" '
            f'srcdoc="{esc(doc)}"></iframe>')


def _reference_sample(decoder: BatchDecoder, m: ModelConfig) -> list[Prediction] | None:
    if m.reference is None or Path(m.reference).suffix != ".jsonl":
        return None
    lines = [line for line in Path(m.reference).read_bytes().splitlines() if line.strip()]
    return [e for e in decoder.predictions(lines) if isinstance(e, Prediction) and e.model == m.name]


def _row(m: ModelConfig, p: Prediction, gt: GroundTruth | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    feats = p.features or {}
    for f in m.features.numeric:
        v = feats.get(f)
        row[f] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None
    for f in m.features.categorical:
        v = feats.get(f)
        row[f] = None if v is None else str(v)
    for i, label in enumerate(m.labels):
        row[f"score: {label}"] = float(p.scores[i])
        if gt is not None:
            row[f"actual: {label}"] = ("yes" if gt.actual[i] else "no") if gt.known[i] else None
    return row


def _sample(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= SAMPLE:
        return rows
    keep = np.random.default_rng(SEED).choice(len(rows), SAMPLE, replace=False)
    return [rows[i] for i in sorted(keep)]


def _run(m: ModelConfig, reference: list[dict[str, Any]], current: list[dict[str, Any]]) -> str:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in current[0] if c in reference[0]]  # the reference sample has no actual labels
    numeric = [c for c in columns if c in m.features.numeric or c.startswith("score: ")]
    categorical = [c for c in columns if c not in numeric]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = Dataset.from_pandas(pd.DataFrame(reference, columns=columns), data_definition=definition)
    cur = Dataset.from_pandas(pd.DataFrame(current, columns=columns), data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    return _with_memory_storage(str(snapshot.get_html_str(as_iframe=False)))


# In the sandbox (opaque origin) reading `localStorage` throws a SecurityError, and evidently's table widget
# reads it unguarded when a column grouping changes. An in-memory stand-in keeps the frame isolated and working.
_STORAGE_SHIM = (
    "<script>try{window.localStorage}catch(e){var m=new Map();Object.defineProperty(window,'localStorage',"
    "{configurable:true,value:{getItem:function(k){return m.has(k)?m.get(k):null},"
    "setItem:function(k,v){m.set(k,String(v))},removeItem:function(k){m.delete(k)},clear:function(){m.clear()},"
    "key:function(i){return Array.from(m.keys())[i]||null},get length(){return m.size}}})}</script>"
)


def _with_memory_storage(doc: str) -> str:
    head = doc.find("<head>")
    if head < 0:
        return _STORAGE_SHIM + doc
    return doc[:head + 6] + _STORAGE_SHIM + doc[head + 6:]
