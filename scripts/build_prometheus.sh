#!/usr/bin/env bash
# Builds Prometheus and promtool 3.x from the Go module proxy into ~/.cache/mlmon (once; later runs reuse
# the binaries), so the tests run against the Prometheus users run today as well as Debian's 2.42.
#
#   scripts/build_prometheus.sh            # prints the directory holding prometheus and promtool
#
# `go install` of the module builds without the web UI's assets (they are embedded only with the
# `builtinassets` tag): the API, which is all the tests use, works; the UI pages answer with an error.
# The `remove_all_sd` tag (Prometheus' own, plugins/*.go) leaves out the cloud service discoveries (AWS,
# Azure, GCE, Kubernetes' client and the rest), most of what a fresh build compiles; static, file and
# HTTP discovery stay, and PromQL, rules, the TSDB, scraping and alerting are the release's own code.
# Module versions v0.3MM.P are Prometheus 3.MM.P. Exits 0 with a reason on stderr and no output when Go
# is missing, so callers can skip the 3.x tests rather than fail.
set -euo pipefail

MODULE_VERSION="${MLMON_PROMETHEUS3_MODULE:-v0.316.0}"
RELEASE="3.$((10#$(echo "${MODULE_VERSION#v0.3}" | cut -d. -f1))).${MODULE_VERSION##*.}"   # v0.316.0 -> 3.16.0
DEST="${XDG_CACHE_HOME:-$HOME/.cache}/mlmon/prometheus-${MODULE_VERSION}/bin"

if [ -x "$DEST/prometheus" ] && [ -x "$DEST/promtool" ]; then
    echo "$DEST"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "build_prometheus.sh: go is not installed: Prometheus ${RELEASE} tests will be skipped" >&2
    exit 0
fi
mkdir -p "$DEST"
start=$(date +%s)
# The release's version string, so `prometheus --version` (and the backtest's report) name it.
ldflags="-X github.com/prometheus/common/version.Version=${RELEASE} -X github.com/prometheus/common/version.Revision=${MODULE_VERSION}"
GOBIN="$DEST" GOFLAGS=-mod=mod go install -tags remove_all_sd -ldflags="$ldflags" \
    "github.com/prometheus/prometheus/cmd/prometheus@${MODULE_VERSION}" \
    "github.com/prometheus/prometheus/cmd/promtool@${MODULE_VERSION}" >&2
echo "build_prometheus.sh: built Prometheus ${RELEASE} in $(( $(date +%s) - start ))s -> $DEST" >&2
echo "$DEST"
