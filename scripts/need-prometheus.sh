#!/usr/bin/env bash
# Make sure Prometheus and promtool are installed (Debian's `prometheus` package: the server and
# promtool, used by tests/e2e/test_metrics.py and tests/unit/test_prometheus_rules.py).
#
#   bash scripts/need-prometheus.sh          install it with apt-get when missing (needs root)
#   bash scripts/need-prometheus.sh --check  only say whether it is there (exit 1 if not)
#
# The package's own service (prometheus.service, port 9090) is not ours: it is stopped and
# disabled after a fresh install, so that it neither scrapes nor holds the port; the tests start
# their own server on a free port with their own storage.
set -euo pipefail

have() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if have; then
    echo "[need-prometheus] $(prometheus --version 2>&1 | head -1)"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "[need-prometheus] prometheus/promtool not found (bash scripts/need-prometheus.sh installs them)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "[need-prometheus] prometheus is missing and installing it needs root: sudo apt-get install prometheus" >&2
    exit 1
fi
echo "[need-prometheus] installing Debian's prometheus package (server + promtool)"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (setup.sh) instead of failing on its lock.
apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends prometheus >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null && \
         apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends prometheus >/dev/null; }
if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
have || { echo "[need-prometheus] the prometheus package installed no prometheus/promtool" >&2; exit 1; }
echo "[need-prometheus] $(prometheus --version 2>&1 | head -1)"
