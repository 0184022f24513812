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
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_PACKAGES=python3,python3-venv,ca-certificates,procps,less,git
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
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
  key=$( { echo "$rootfs $TORCH_VERSION"; cat images/local-base/Dockerfile; } | hash_of)
  tag=labgpu/torch-base:$key
  if ! have_image "$tag"; then
    ctx=$(make_context images/local-base/Dockerfile)
    log "building $tag (torch $TORCH_VERSION from PyPI; about 10 minutes the first time)"
    docker build -q --build-arg ROOTFS_IMAGE="$rootfs" --build-arg TORCH_VERSION="$TORCH_VERSION" -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
    prune_old_tags labgpu/torch-base "$tag"
  fi
  echo "$tag"
}

build_workspace() {
  local base=$1 key tag ctx
  key=$( { echo "$base"; find images/workspace -type f | sort | xargs cat; } | hash_of)
  tag=labgpu/workspace:$key
  if ! have_image "$tag"; then
    ctx=$(make_context images/workspace/.)
    log "building $tag on $base (a few minutes the first time)"
    docker build -q --build-arg BASE_IMAGE="$base" -t "$tag" "$ctx" >/dev/null
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
