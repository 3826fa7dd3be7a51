"""Run promtool on generated rules: `promtool check rules` on the rule files, `promtool test rules` on the tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, TESTS_FILE


class PromtoolMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    command: list[str]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def promtool() -> str:
    from monitor.services import binary  # honours MLMON_PROMTOOL

    path = binary("promtool")
    if path is None:
        raise PromtoolMissing(
            "promtool is not on PATH (Debian: apt-get install -y --no-install-recommends prometheus)"
        )
    return path


def check(out_dir: Path, timeout: float = 600, tool: str | None = None) -> list[Result]:
    """Both promtool runs over the generated files in out_dir; the test run is skipped if the check fails.

    `tool` picks another promtool binary (a Prometheus 3.x build, say); default: the one on PATH."""
    tool = tool or promtool()
    commands = [
        [tool, "check", "rules", str(out_dir / RECORDING_FILE), str(out_dir / ALERTS_FILE)],
        [tool, "test", "rules", str(out_dir / TESTS_FILE)],
    ]
    results = []
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        results.append(Result(command, proc.returncode, proc.stdout + proc.stderr))
        if proc.returncode:
            break
    return results
