"""Regenerate docs/img/replay-summary.png: `monitor replay`'s terminal summary of the bundled example.

rich records the summary as SVG; headless Chromium renders it to PNG. Run from a checkout:
    python scripts/replay_screenshot.py
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from monitor.inputs import load_inputs
from monitor.replay import replay
from monitor.summary import render, summarize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "replay-summary.png"
WIDTH = 118  # terminal columns


def main() -> int:
    inputs = load_inputs(None, None, None, None)
    result = replay(inputs.config, inputs.predictions, inputs.ground_truth)
    view = summarize(inputs.config, result.figures, result.engine.latest_event_time or 0.0, result.rejections)
    console = Console(record=True, width=WIDTH, force_terminal=True, color_system="truecolor",
                      file=io.StringIO())
    console.print(render(view))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium is needed to render the PNG", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "summary.svg"
        console.save_svg(str(svg), title="monitor replay")
        html = Path(tmp) / "summary.html"
        html.write_text(f'<html><body style="margin:0;background:#fff"><img src="{svg.name}" '
                        f'style="width:{WIDTH * 9 + 40}px"></body></html>')
        box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg.read_text())
        assert box is not None
        height = int((WIDTH * 9 + 40) * float(box.group(2)) / float(box.group(1))) + 2
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--hide-scrollbars", f"--window-size={WIDTH * 9 + 40},{height}",
                        f"--screenshot={OUT}", html.as_uri()], check=True, capture_output=True, timeout=120)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
