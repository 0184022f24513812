#!/usr/bin/env bash
# Build the images LabGPU Hub runs, one PyTorch stack ("flavour") per row of
# images/flavours.tsv, each tagged by a hash of its inputs so that an unchanged image is never
# rebuilt:
#   labgpu/rootfs:<hash>      Debian bookworm made with debootstrap and `docker import`,
#                             shared by every flavour
#   labgpu/torch-base:<hash>  python3 + that flavour's torch on the rootfs: a local stand-in for
#                             the official PyTorch-CUDA image (no registry can be reached here)
#   labgpu/workspace:<hash>   images/workspace/Dockerfile built on that base; also tagged
#                             labgpu/workspace:local (the default flavour, which the demo and
#                             the tests use) or labgpu/workspace:<flavour>
#
#   scripts/build-images.sh                        the default flavour
#   scripts/build-images.sh --flavour pytorch-2.7  one flavour (repeatable)
#   scripts/build-images.sh --all                  every flavour of the table
#   scripts/build-images.sh --official ...         on each flavour's official base (needs a registry)
#   scripts/build-images.sh --plan ...             print what would be built, with the build
#                                                  arguments, and build nothing
# BASE_IMAGE=<image> builds the workspace on that image instead (one flavour at a time).
# LABGPU_BUILD_CA: a CA bundle that pip inside `docker build` should trust (a lab behind a
# TLS-intercepting proxy); defaults to the host's bundle when it exists.
set -euo pipefail
shopt -s inherit_errexit  # a failed build inside $(...) stops the script
export LC_ALL=C           # the same file order (and so the same input hashes) in every locale
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_PACKAGES=python3,python3-venv,ca-certificates,procps,less,git
FLAVOURS_FILE=${LABGPU_FLAVOURS_FILE:-images/flavours.tsv}
BUILD_CA=${LABGPU_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
hash_of() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- the flavour table -------------------------------------------------------------------------
# flavour_row NAME -> "name torch torchvision cuda python official minutes" (or fails, listing names)
flavour_names() { awk '!/^[[:space:]]*(#|$)/ {print $1}' "$FLAVOURS_FILE"; }
flavour_row() {
  local row
  row=$(awk -v n="$1" '!/^[[:space:]]*(#|$)/ && $1 == n {print; exit}' "$FLAVOURS_FILE")
  [ -n "$row" ] || die "no flavour '$1' in $FLAVOURS_FILE (flavours: $(flavour_names | paste -sd' '))"
  # shellcheck disable=SC2086
  set -- $row
  [ $# -eq 7 ] || die "$FLAVOURS_FILE: the row of '$1' has $# columns, not 7 (flavour torch torchvision cuda python official minutes)"
  echo "$row"
}

plan=0 official=0 wanted=()
while [ $# -gt 0 ]; do
  case "$1" in
    --flavour) [ $# -ge 2 ] || die "--flavour needs a name"; wanted+=("$2"); shift 2 ;;
    --flavour=*) wanted+=("${1#--flavour=}"); shift ;;
    --all) mapfile -t wanted < <(flavour_names); shift ;;
    --official) official=1; shift ;;
    --plan) plan=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(default)
for name in "${wanted[@]}"; do flavour_row "$name" >/dev/null; done
if [ -n "${BASE_IMAGE:-}" ] && [ ${#wanted[@]} -gt 1 ]; then
  die "BASE_IMAGE names one base: build one flavour at a time with it"
fi

# --- tags, computed without building (so a build keeps every flavour's current images) --------
rootfs_tag() { echo "labgpu/rootfs:$(printf '%s|%s|%s|minbase' "$SUITE" "$MIRROR" "$ROOTFS_PACKAGES" | hash_of)"; }
torch_base_tag() {  # rootfs torch torchvision
  echo "labgpu/torch-base:$( { echo "$1 $2 $3"; cat images/local-base/Dockerfile; } | hash_of)"
}
# The image carries only what labgpu-doctor needs of labgpu, so only that is an input.
doctor_files=(labgpu/__init__.py labgpu/doctor/*.py)
workspace_tag() {  # base
  echo "labgpu/workspace:$( { echo "$1"; find images/workspace -type f | sort | xargs cat; cat "${doctor_files[@]}" 2>/dev/null; } | hash_of)"
}
name_tag() { if [ "$1" = default ]; then echo labgpu/workspace:local; else echo "labgpu/workspace:$1"; fi; }
base_of() {  # flavour row fields -> the base the workspace is built on
  local name=$1 torch=$2 vision=$3 off=$4
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"
  elif [ $official -eq 1 ]; then
    [ "$off" != "-" ] || die "flavour '$name' names no official base in $FLAVOURS_FILE: set BASE_IMAGE"
    echo "$off"
  else torch_base_tag "$(rootfs_tag)" "$torch" "$vision"
  fi
}

# Remove older tags of a repository, keeping the current tag of every flavour and the name tags.
prune_old_tags() {
  local repo=$1 keep=() name row
  for name in $(flavour_names); do
    row=$(flavour_row "$name"); set -- $row
    case "$repo" in
      labgpu/rootfs) keep+=("$(rootfs_tag)") ;;
      labgpu/torch-base) keep+=("$(torch_base_tag "$(rootfs_tag)" "$2" "$3")") ;;
      labgpu/workspace) keep+=("$(workspace_tag "$(torch_base_tag "$(rootfs_tag)" "$2" "$3")")" "$(name_tag "$1")") ;;
    esac
  done
  docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | grep -v -x -F "${keep[@]/#/-e}" \
    | grep -v -e ':local$' -e ':pytorch-' | xargs -r docker image rm >/dev/null 2>&1 || true
}

# A build context holding the given files plus build-ca.crt (empty when no extra CA).
make_context() {
  local dir; dir=$(mktemp -d)
  cp -r "$@" "$dir"/
  if [ -n "$BUILD_CA" ] && [ -s "$BUILD_CA" ]; then cp "$BUILD_CA" "$dir/build-ca.crt"; else : > "$dir/build-ca.crt"; fi
  echo "$dir"
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

build_rootfs() {
  local tag dir; tag=$(rootfs_tag)
  if have_image "$tag"; then log "  rootfs $tag: cached"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/setup.sh (apt-get install debootstrap)"
  dir=$(mktemp -d)
  log "  rootfs: debootstrap $SUITE into $dir (about a minute)"
  debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; die "debootstrap failed (log: $dir.log)"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import - "$tag" >/dev/null
  rm -rf "$dir" "$dir.log"
  prune_old_tags labgpu/rootfs
}

build_torch_base() {  # tag torch torchvision
  local tag=$1 ctx
  if have_image "$tag"; then log "  torch base $tag: cached"; return; fi
  ctx=$(make_context images/local-base/Dockerfile)
  log "  torch base $tag: torch $2 + torchvision $3 from PyPI (about 10 minutes)"
  docker_build --build-arg ROOTFS_IMAGE="$(rootfs_tag)" --build-arg TORCH_VERSION="$2" --build-arg TORCHVISION_VERSION="$3" -t "$tag" "$ctx"
  rm -rf "$ctx"
  prune_old_tags labgpu/torch-base
}

build_workspace() {  # flavour base tag
  local flavour=$1 base=$2 tag=$3 ctx labels unlabelled name value
  if have_image "$tag"; then log "  workspace $tag: cached"; return; fi
  ctx=$(make_context images/workspace/.)
  mkdir -p "$ctx/labgpu-src/labgpu/doctor"
  cp labgpu/__init__.py "$ctx/labgpu-src/labgpu/"
  cp labgpu/doctor/*.py "$ctx/labgpu-src/labgpu/doctor/"
  log "  workspace $tag on $base: JupyterLab and the lab's stack (about 4 minutes)"
  # Built by image ID, untagged: the labelled image below is its only name (nothing to remove).
  docker_build --build-arg BASE_IMAGE="$base" --iidfile "$ctx/unlabelled.iid" "$ctx"
  unlabelled=$(cat "$ctx/unlabelled.iid")
  # Label the image with the versions inside it (read from the image itself), in one step.
  labels=(--label "org.labgpu.base-image=$base" --label "org.labgpu.flavour=$flavour"
          --label "org.labgpu.version.labgpu=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)")
  while IFS='=' read -r name value; do
    [ -n "$name" ] && labels+=(--label "org.labgpu.version.$name=$value")
  done < <(docker run --rm --network none --entrypoint cat "$unlabelled" /etc/labgpu/versions.env)
  echo "FROM $unlabelled" > "$ctx/Dockerfile.labels"
  docker_build -f "$ctx/Dockerfile.labels" "${labels[@]}" -t "$tag" "$ctx"
  rm -rf "$ctx"
}

# The image must hold the stack its row names: torch, CUDA and Python, read from its labels.
check_versions() {  # tag torch cuda python
  local tag=$1 got
  got=$(docker image inspect "$tag" --format '{{index .Config.Labels "org.labgpu.version.torch"}} {{index .Config.Labels "org.labgpu.version.cuda"}} {{index .Config.Labels "org.labgpu.version.python"}}')
  set -- "$tag" "$2" "$3" "$4" $got
  case "$5" in "$2"|"$2"+*) ;; *) die "$tag has torch $5, not $2 as $FLAVOURS_FILE says" ;; esac
  [ "$3" = "-" ] || [ "$6" = "$3" ] || die "$tag has CUDA $6, not $3 as $FLAVOURS_FILE says (PyPI's wheel for torch $2 changed? pin another index)"
  case "$7" in "$4"|"$4".*) ;; *) die "$tag has Python $7, not $4 as $FLAVOURS_FILE says" ;; esac
}

build_flavour() {  # name torch torchvision cuda python official minutes
  local name=$1 base tag
  base=$(base_of "$1" "$2" "$3" "$6")
  tag=$(workspace_tag "$base")
  if [ $plan -eq 1 ]; then
    printf 'flavour=%s torch=%s torchvision=%s cuda=%s python=%s base=%s workspace=%s name=%s\n' \
      "$1" "$2" "$3" "$4" "$5" "$base" "$tag" "$(name_tag "$1")"
    return
  fi
  # One build of a flavour at a time on this engine: a second run waits, then finds it cached.
  exec 9>"${TMPDIR:-/tmp}/labgpu-build-images-$name.lock"
  flock -n 9 || { log "flavour $name is being built by another run; waiting for it"; flock 9; }
  log "flavour $name: torch $2, CUDA $4, Python $5 (cold: about $7 minutes; cached steps are instant)"
  if [ -z "${BASE_IMAGE:-}" ] && [ $official -eq 0 ]; then
    log "  step 1/3"; build_rootfs
    log "  step 2/3"; build_torch_base "$base" "$2" "$3"
    log "  step 3/3"
  fi
  build_workspace "$name" "$base" "$tag"
  [ -n "${BASE_IMAGE:-}" ] || check_versions "$tag" "$2" "$4" "$5"
  docker tag "$tag" "$(name_tag "$name")"
  prune_old_tags labgpu/workspace
  log "flavour $name: $tag (also $(name_tag "$name"))"
}

[ $plan -eq 1 ] || docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running, and may this user use it?)"
for name in "${wanted[@]}"; do
  # shellcheck disable=SC2046
  build_flavour $(flavour_row "$name")
done
