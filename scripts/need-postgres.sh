#!/usr/bin/env bash
# Make sure Debian's PostgreSQL server binaries are installed (initdb, pg_ctl, postgres), for the
# tests and benchmarks that run the ledger on PostgreSQL. They start a throwaway cluster of their
# own (tests/postgres.py: a temporary directory, a free port, the unprivileged user labgpu-pg);
# no machine-wide PostgreSQL service is needed, created or touched.
#
#   bash scripts/need-postgres.sh          install it with apt-get when missing (needs root)
#   bash scripts/need-postgres.sh --check  only say whether it is there (exit 1 if not)
set -euo pipefail

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
have() { local dir; dir=$(bindir); [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; }

if have; then
    echo "[need-postgres] $("$(bindir)/postgres" --version)"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "[need-postgres] PostgreSQL not found (bash scripts/need-postgres.sh installs it)" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "[need-postgres] PostgreSQL is missing and installing it needs root: sudo apt-get install postgresql" >&2
    exit 1
fi
echo "[need-postgres] installing Debian's postgresql package (server binaries only: no cluster is created)"
# Debian creates and starts a machine-wide "main" cluster when the server is installed, unless
# told not to: ours are throwaway clusters the tests start themselves.
mkdir -p /etc/postgresql-common/createcluster.d
[[ -e /etc/postgresql-common/createcluster.d/labgpu.conf ]] \
    || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/labgpu.conf
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (setup.sh) instead of failing on its lock.
apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null && \
         apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql >/dev/null; }
have || { echo "[need-postgres] the postgresql package installed no initdb/pg_ctl" >&2; exit 1; }
echo "[need-postgres] $("$(bindir)/postgres" --version)"
