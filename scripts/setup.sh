#!/usr/bin/env bash
# Set up everything LabGPU Hub needs on a fresh Debian machine (idempotent, fast when done):
# system packages (debootstrap, the proxy, chromium for browser tests, docker-compose, the
# OpenSSH client), the virtual environment .venv with labgpu and its test tools, and the
# workspace images.
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-images   skip the image build
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }

build_images=1
[ "${1:-}" = "--no-images" ] && build_images=0

# --- system packages -----------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v configurable-http-proxy >/dev/null || need+=(node-configurable-http-proxy)
command -v chromium >/dev/null || need+=(chromium)
command -v docker >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)        # the compose deployment and its test
command -v ssh >/dev/null && command -v sftp >/dev/null || need+=(openssh-client)  # the SSH gateway's tests
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing ${need[*]} from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "the Docker engine is not answering; trying to start it"
  (service docker start || systemctl start docker) >/dev/null 2>&1 || true
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "cannot reach the Docker engine: start dockerd and rerun"; exit 1; }
fi

# --- Python environment ----------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.labgpu-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing labgpu and its test tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

# --- images ----------------------------------------------------------------------------------
if [ $build_images -eq 1 ]; then
  bash scripts/build-images.sh
fi
log "ready"
