#!/bin/sh
# The hub image's entrypoint (under tini):
#   jupyterhub [ARGS]   the hub, once the state directory is ready
#   poller [ARGS]       the compose poller service: writes the GPU list the hub schedules
#                       ($LABGPU_INVENTORY_FILE) from the GPUs it sees, then `labgpu poller ARGS`
#   anything else       runs as given (`labgpu backup DIR`, `caddy ...`, a shell)
set -eu

if [ "${1:-}" = "poller" ]; then
    shift
    source=${LABGPU_POLLER_SOURCE:-nvml}
    if [ -n "${LABGPU_INVENTORY_FILE:-}" ]; then
        python3 - "$source" "$LABGPU_INVENTORY_FILE" <<'PY'
import json, os, sys
from labgpu.gpus.inventory import InventoryError, gpu_to_dict, inventory_source
source, path = sys.argv[1:]
try:
    gpus = inventory_source(source).gpus()
except InventoryError as e:
    sys.exit(f"labgpu-poller: cannot list the GPUs ({source}): {e}")
with open(path + ".new", "w") as f:
    json.dump({"gpus": [gpu_to_dict(g) for g in gpus]}, f, indent=1)
os.replace(path + ".new", path)
print(f"labgpu-poller: wrote the {len(gpus)} GPU(s) of {source} to {path} for the hub", file=sys.stderr)
PY
    fi
    exec labgpu poller --source "$source" "$@"
fi
if [ "${1:-}" != "jupyterhub" ]; then
    exec "$@"
fi

state=${LABGPU_STATE_DIR:-/srv/labgpu/state}
mkdir -p "$state"
chmod 700 "$state"
umask 077

# A new container runs no proxy or hub of an earlier container, so pid files in the state volume
# are stale; JupyterHub would otherwise signal whatever process of this container has that pid.
rm -f "$state/proxy.pid" "$state/jupyterhub.pid"

# Production needs a cookie secret: made once, kept in the state volume (and in its backups).
if [ -z "${JUPYTERHUB_COOKIE_SECRET:-}" ] && [ ! -s "$state/cookie_secret" ]; then
    python3 -c 'import secrets; print(secrets.token_hex(32))' > "$state/cookie_secret.new"
    mv "$state/cookie_secret.new" "$state/cookie_secret"
    echo "labgpu-hub: made a new cookie secret in $state/cookie_secret" >&2
fi

# With LABGPU_GPU_SOURCE=static:FILE the GPU list comes from the poller service (it alone has the
# GPUs): on the first start, wait for it to write the file.
case "${LABGPU_GPU_SOURCE:-}" in
static:*)
    file=${LABGPU_GPU_SOURCE#static:}
    waited=0
    while [ ! -s "$file" ]; do
        if [ "$waited" -ge "${LABGPU_INVENTORY_WAIT:-120}" ]; then
            echo "labgpu-hub: no GPU list at $file after ${waited}s: the poller service writes it when it starts" \
                 "(docker-compose logs poller says why it did not). Without GPUs, set LABGPU_GPU_SOURCE=none." >&2
            exit 1
        fi
        [ "$waited" -eq 0 ] && echo "labgpu-hub: waiting for the poller service to write the GPU list $file" >&2
        sleep 2
        waited=$((waited + 2))
    done
    ;;
esac

exec "$@" -f /srv/labgpu/jupyterhub_config.py
