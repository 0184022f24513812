#!/usr/bin/env bash
# Build the hub image (images/hub/Dockerfile) as labgpu/hub:<hash of its inputs>, also tagged
# labgpu/hub:local (the tag docker-compose.yml runs). An unchanged image is never rebuilt, and a
# change to the labgpu code rebuilds only the last layer (1-2 min on fuse-overlayfs).
# The base: BASE_IMAGE when set (e.g. debian:bookworm-slim where a registry is reachable), else
# ROOTFS_IMAGE, else the debootstrap rootfs scripts/build-images.sh made (labgpu/rootfs:<hash>).
# LABGPU_BUILD_CA: a CA bundle pip inside `docker build` should trust (default: the host's).
# Prints the image tag on stdout.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
cd "$(dirname "$0")/.."

BUILD_CA=${LABGPU_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
log() { printf '[build-hub-image] %s\n' "$*" >&2; }

docker info >/dev/null 2>&1 || { log "cannot reach the Docker engine (is dockerd running, and may this user use it?)"; exit 1; }

base=${BASE_IMAGE:-${ROOTFS_IMAGE:-}}
if [ -z "$base" ]; then
  base=$(docker image ls labgpu/rootfs --format '{{.Repository}}:{{.Tag}}' | grep -v ':<none>$' | head -1 || true)
  [ -n "$base" ] || { log "no labgpu/rootfs image: run scripts/build-images.sh first (or set BASE_IMAGE=debian:bookworm-slim where a registry is reachable)"; exit 1; }
fi
# The base's image id (not its name) is an input, so a rebuilt base rebuilds the hub.
base_id=$(docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || echo "$base (pulled)")

# What goes into the image, in the layout the Dockerfile expects (the repository's).
inputs=(images/hub/Dockerfile images/hub/entrypoint.sh images/hub/Caddyfile pyproject.toml jupyterhub_config.py)
mapfile -t code < <(find labgpu quotas -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort)
key=$( { echo "$base_id"; for f in "${inputs[@]}" "${code[@]}"; do echo "== $f"; cat "$f"; done; } | sha256sum | cut -c1-16)
tag=labgpu/hub:$key

if docker image inspect "$tag" >/dev/null 2>&1; then
  log "up to date: $tag"
else
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  tar -c "${inputs[@]}" "${code[@]}" | tar -x -C "$ctx"
  # pyproject names README.md; a fixed stand-in keeps README edits from rebuilding the dependencies.
  echo "LabGPU Hub (see the repository's README.md)" > "$ctx/README.md"
  if [ -n "$BUILD_CA" ] && [ -s "$BUILD_CA" ]; then cp "$BUILD_CA" "$ctx/build-ca.crt"; fi
  log "building $tag on $base (about 9 min the first time on a busy 2-core machine; after a code change only its last layer)"
  build_log=$(mktemp)
  start=$SECONDS
  if ! docker build -f "$ctx/images/hub/Dockerfile" --build-arg BASE_IMAGE="$base" \
      --label "org.labgpu.version.labgpu=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" \
      -t "$tag" "$ctx" >"$build_log" 2>&1; then
    grep -v -e 'legacy builder is deprecated' -e 'buildx' "$build_log" | tail -40 >&2
    log "docker build failed (full log: $build_log)"
    exit 1
  fi
  rm -f "$build_log"
  log "built $tag in $((SECONDS - start)) s"
fi
docker tag "$tag" labgpu/hub:local
# Older hub tags go, so rebuilds do not fill the disk.
docker image ls labgpu/hub --format '{{.Repository}}:{{.Tag}}' | grep -v -x -F -e "$tag" -e labgpu/hub:local \
  | xargs -r docker image rm >/dev/null 2>&1 || true
echo "$tag"
