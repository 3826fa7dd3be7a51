"""Prometheus recording rules, alert rules and their promtool tests, generated from the monitor config.

    files = generate(load_config("config.yaml"), RuleOptions())   # {relative path: text}
    write(files, Path("alert_rules"))
    check(Path("alert_rules"))                                     # promtool check + test

Design and tier arithmetic: docs/alerting.md.
"""

from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, TESTS_FILE, generate, write
from monitor.rules.options import RuleOptions
from monitor.rules.tiers import Tier, max_burn_rate, tiers_for

__all__ = [
    "ALERTS_FILE",
    "RECORDING_FILE",
    "TESTS_FILE",
    "RuleOptions",
    "Tier",
    "generate",
    "max_burn_rate",
    "tiers_for",
    "write",
]
