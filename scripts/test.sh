#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs the whole suite.
# Real components only: Debian's prometheus/alertmanager, Apache Kafka's jars from Maven Central.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the real Prometheus and Alertmanager, Chromium for the report's screenshot test and
# docker-compose (v1) to validate docker-compose.yml without a Docker engine.
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Rust from rustup lives in ~/.cargo/bin, which a non-login shell may not have on PATH: without it the
# optional native core (docs/native.md) would silently not build.
if [ -d "$HOME/.cargo/bin" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
# CI tests the native core: its build is optional for users (pure Python runs without it), not here.
if ! python3 -c "import monitor._native" 2>/dev/null; then
    echo "scripts/test.sh: monitor._native did not build (is cargo on PATH? see the pip output above)" >&2
    exit 1
fi
# Fetch Kafka's jars once (cached under ~/.cache/mlmon) so the first Kafka test does not time out on it.
python3 -m monitor.cli broker --fetch-only
python3 -m monitor.cli broker --fetch-only --kafka-version 3.9.2  # the compatibility test's release

# Prometheus 3.x beside Debian's 2.42: the rules' promtool tests and the backtest run under both. Built
# once from the Go module proxy into ~/.cache/mlmon (scripts/build_prometheus.sh); without Go, or with
# MLMON_SKIP_PROMETHEUS3=1, those tests skip and say why.
if [ -z "${MLMON_SKIP_PROMETHEUS3:-}" ]; then
    p3="$(scripts/build_prometheus.sh)"
    if [ -n "$p3" ]; then export MLMON_PROMETHEUS3_DIR="$p3" MLMON_PROMTOOL3="$p3/promtool"; fi
fi

python3 -m ruff check monitor tests bench
# Two test processes (pytest-xdist), a test module's tests always in the same one: about a third of the
# suite's wall time is spent waiting on brokers, Prometheus and real-time alerting, during which the other
# process uses the idle core. Each process starts its own broker. MLMON_TEST_PROCESSES=0 runs in one.
exec python3 -m pytest -q -p no:cacheprovider -n "${MLMON_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder "$@"
