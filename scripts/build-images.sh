#!/usr/bin/env bash
# Build the images LabGPU Hub runs, tagged by a hash of their inputs so that an unchanged
# image is never rebuilt:
#   labgpu/rootfs:<hash>      Debian bookworm made with debootstrap and `docker import`
#   labgpu/torch-base:<hash>  python3 + torch on that rootfs: a local stand-in for the
#                             official PyTorch-CUDA image (no registry can be reached here)
#   labgpu/workspace:<hash>   images/workspace/Dockerfile built on that base; also tagged
#                             labgpu/workspace:local, the tag the demo and the tests use
# With BASE_IMAGE set (e.g. pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime on a GPU server
# that can pull), the workspace is built on it and no local base is made.
# LABGPU_BUILD_CA: a CA bundle that pip inside `docker build` should trust (a lab behind a
# TLS-intercepting proxy); defaults to the host's bundle when it exists.
set -euo pipefail
shopt -s inherit_errexit  # a failed build inside $(...) stops the script
export LC_ALL=C           # the same file order (and so the same input hashes) in every locale
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_PACKAGES=python3,python3-venv,ca-certificates,procps,less,git
TORCH_VERSION=${TORCH_VERSION:-2.14.1}          # a pinned pair, as in the official images
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.2}
BUILD_CA=${LABGPU_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}

log() { printf '[build-images] %s\n' "$*" >&2; }
hash_of() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Remove older tags of a repository once a new one is built, so rebuilds do not fill the disk.
prune_old_tags() {
  local repo=$1 keep=$2
  docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | grep -v -x -F -e "$keep" -e "$repo:local" \
    | xargs -r docker image rm >/dev/null 2>&1 || true
}

# A build context holding the given files plus build-ca.crt (empty when no extra CA).
make_context() {
  local dir; dir=$(mktemp -d)
  cp -r "$@" "$dir"/
  if [ -n "$BUILD_CA" ] && [ -s "$BUILD_CA" ]; then cp "$BUILD_CA" "$dir/build-ca.crt"; else : > "$dir/build-ca.crt"; fi
  echo "$dir"
}

build_rootfs() {
  local key tag dir
  key=$(printf '%s|%s|%s|minbase' "$SUITE" "$MIRROR" "$ROOTFS_PACKAGES" | hash_of)
  tag=labgpu/rootfs:$key
  if ! have_image "$tag"; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing: run scripts/setup.sh (apt-get install debootstrap)"; exit 1; }
    dir=$(mktemp -d)
    log "debootstrap $SUITE into $dir (about a minute)"
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; log "debootstrap failed (log: $dir.log)"; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | docker import - "$tag" >/dev/null
    rm -rf "$dir" "$dir.log"
    prune_old_tags labgpu/rootfs "$tag"
  fi
  echo "$tag"
}

build_torch_base() {
  local rootfs=$1 key tag ctx
  key=$( { echo "$rootfs $TORCH_VERSION $TORCHVISION_VERSION"; cat images/local-base/Dockerfile; } | hash_of)
  tag=labgpu/torch-base:$key
  if ! have_image "$tag"; then
    ctx=$(make_context images/local-base/Dockerfile)
    log "building $tag (torch $TORCH_VERSION from PyPI; about 10 minutes the first time)"
    docker_build --build-arg ROOTFS_IMAGE="$rootfs" --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg TORCHVISION_VERSION="$TORCHVISION_VERSION" -t "$tag" "$ctx"
    rm -rf "$ctx"
    prune_old_tags labgpu/torch-base "$tag"
  fi
  echo "$tag"
}

# Run `docker build`, keeping its output in a log that is shown when the build fails.
docker_build() {
  local log; log=$(mktemp)
  if ! docker build "$@" >"$log" 2>&1; then
    grep -v -e 'legacy builder is deprecated' -e 'buildx' "$log" | tail -40 >&2
    log "docker build $* failed (full log: $log)"
    exit 1
  fi
  rm -f "$log"
}

build_workspace() {
  local base=$1 key tag ctx labels
  # The image carries only what labgpu-doctor needs of labgpu, so only that is an input.
  local doctor_files=(labgpu/__init__.py labgpu/doctor/*.py)
  key=$( { echo "$base"; find images/workspace -type f | sort | xargs cat; cat "${doctor_files[@]}" 2>/dev/null; } | hash_of)
  tag=labgpu/workspace:$key
  if ! have_image "$tag"; then
    ctx=$(make_context images/workspace/.)
    mkdir -p "$ctx/labgpu-src/labgpu/doctor"
    cp labgpu/__init__.py "$ctx/labgpu-src/labgpu/"
    cp labgpu/doctor/*.py "$ctx/labgpu-src/labgpu/doctor/"
    log "building $tag on $base (a few minutes the first time)"
    docker_build --build-arg BASE_IMAGE="$base" -t "$tag-unlabelled" "$ctx"
    # Label the image with the versions inside it (read from the image itself), in one step.
    labels=(--label "org.labgpu.base-image=$base"
            --label "org.labgpu.version.labgpu=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)")
    while IFS='=' read -r name value; do
      [ -n "$name" ] && labels+=(--label "org.labgpu.version.$name=$value")
    done < <(docker run --rm --network none --entrypoint cat "$tag-unlabelled" /etc/labgpu/versions.env)
    echo "FROM $tag-unlabelled" > "$ctx/Dockerfile.labels"
    docker_build -f "$ctx/Dockerfile.labels" "${labels[@]}" -t "$tag" "$ctx"
    docker image rm "$tag-unlabelled" >/dev/null
    rm -rf "$ctx"
  fi
  docker tag "$tag" labgpu/workspace:local
  prune_old_tags labgpu/workspace "$tag"
  echo "$tag"
}

docker info >/dev/null 2>&1 || { log "cannot reach the Docker engine (is dockerd running, and may this user use it?)"; exit 1; }
if [ -n "${BASE_IMAGE:-}" ]; then
  base=$BASE_IMAGE
else
  base=$(build_torch_base "$(build_rootfs)")
fi
ws=$(build_workspace "$base")
log "workspace image: $ws (also labgpu/workspace:local)"
