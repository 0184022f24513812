#!/usr/bin/env bash
# Set up and run the demo hub on http://localhost:8000 (user "demo", password "demo").
# Workspaces run the locally built image; CPU-only when this machine has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LABGPU_MODE=${LABGPU_MODE:-demo}
export LABGPU_STATE_DIR=${LABGPU_STATE_DIR:-$PWD/.state}
echo "LabGPU Hub demo: open http://localhost:8000 and log in as demo / ${LABGPU_DEMO_PASSWORD:-demo} (Ctrl-C stops the hub)"
exec .venv/bin/jupyterhub -f jupyterhub_config.py
