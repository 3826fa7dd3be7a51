#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs the whole suite.
# Real components only: Debian's prometheus/alertmanager, Apache Kafka's jars from Maven Central.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager >/dev/null
    else
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager >/dev/null
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
# Fetch Kafka's jars once (cached under ~/.cache/mlmon) so the first Kafka test does not time out on it.
monitor broker --fetch-only

python3 -m ruff check monitor tests bench
exec python3 -m pytest -q -p no:cacheprovider "$@"
