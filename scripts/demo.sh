#!/usr/bin/env bash
# Set up and run the demo hub on http://localhost:8000.
# On a machine without an NVIDIA driver the demo hub has 4 SIMULATED GPUs (LABGPU_DEMO_GPUS,
# default 4xH100) and the users of quotas/demo.yaml (demo, alice, bob in vision-lab, carol and
# dave in nlp-lab; password "demo"), so allocation, the fair-share queue and idle reclamation
# can be watched without a GPU. Workspaces run the locally built image.
#   LABGPU_DEMO_GPUS=2xA100-NVLink+2xL4 scripts/demo.sh     other simulated GPUs
#   LABGPU_DEMO_GPUS=none scripts/demo.sh                   no simulated GPUs (real ones, if any)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LABGPU_MODE=${LABGPU_MODE:-demo}
export LABGPU_STATE_DIR=${LABGPU_STATE_DIR:-$PWD/.state}
password=${LABGPU_DEMO_PASSWORD:-demo}

if [ -z "${LABGPU_DEMO_GPUS+set}" ] && [ -z "${LABGPU_GPU_SOURCE:-}" ] && ! nvidia-smi -L >/dev/null 2>&1; then
  export LABGPU_DEMO_GPUS=4xH100
fi
[ "${LABGPU_DEMO_GPUS:-}" = none ] && unset LABGPU_DEMO_GPUS
if [ -n "${LABGPU_DEMO_GPUS:-}" ]; then
  export LABGPU_QUOTAS=${LABGPU_QUOTAS:-$PWD/quotas/demo.yaml}
  export LABGPU_DEMO_USERS=${LABGPU_DEMO_USERS:-demo,alice,bob,carol,dave}
  export LABGPU_POLLER_INTERVAL=${LABGPU_POLLER_INTERVAL:-2}
  export LABGPU_RECLAIM_INTERVAL=${LABGPU_RECLAIM_INTERVAL:-15s}
  export LABGPU_RECLAIM_WARN=${LABGPU_RECLAIM_WARN:-2m}
  cat <<BANNER
================================================================================================
 LabGPU Hub demo with ${LABGPU_DEMO_GPUS} SIMULATED GPUs (no NVIDIA driver on this machine).
 Open http://localhost:8000 and log in as demo, alice, bob (vision-lab), carol or dave (nlp-lab),
 password "${password}". Everything but the devices is real: the ledger grants GPUs by UUID,
 a spawn that asks for busy GPUs waits in the fair-share queue and shows its position, and an
 idle GPU server is warned on the hub page, then stopped after 5 minutes (quotas/demo.yaml).
 To make a simulated GPU busy, run in a JupyterLab terminal:   LABGPU_SIM_BUSY=1 sleep 3600
================================================================================================
BANNER
else
  echo "LabGPU Hub demo: open http://localhost:8000 and log in as ${LABGPU_DEMO_USERS:-demo} / ${password}"
fi
echo "(Ctrl-C stops the hub; workspaces keep running and are adopted at the next start)"
exec .venv/bin/jupyterhub -f jupyterhub_config.py
