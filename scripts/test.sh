#!/usr/bin/env bash
# Set up and run all the checks: ruff (lint and format), mypy, then the tests: unit, end-to-end
# (real Docker, JupyterHub, proxy, PostgreSQL, Prometheus, docker-compose, OpenSSH) and browser
# (Playwright + Chromium), then DockerSpawner's own upstream suite against our spawner
# (tests/upstream/run.py). With CI=true a missing real part fails the run instead of skipping.
#   scripts/test.sh                      everything
#   scripts/test.sh [pytest args...]     only pytest with these arguments (a focused run)
# The images build in the background while the checks that need none (ruff, mypy, the unit
# tests) run; the end-to-end tests run on LABGPU_TEST_WORKERS pytest-xdist workers (default 3,
# one file per worker: they mostly wait on Docker and JupyterHub), the unit tests on 2.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }
bash scripts/setup.sh --no-images
# What only the tests need: PostgreSQL's server binaries (throwaway clusters) and Prometheus.
bash scripts/need-postgres.sh
bash scripts/need-prometheus.sh
mkdir -p test-output

build_images() { bash scripts/build-images.sh && bash scripts/build-hub-image.sh >/dev/null; }

if [ $# -gt 0 ]; then
  build_images
  set +e
  .venv/bin/python -m pytest -ra --junitxml=test-output/junit.xml "$@"
  rc=$?
  [ $rc -eq 5 ] && { log "no tests were collected: that is a failure"; exit 1; }
  exit $rc
fi

log "building the images in the background (log: test-output/images.log)"
build_images > test-output/images.log 2>&1 &
images_pid=$!
trap 'kill $images_pid 2>/dev/null || true' EXIT

log "ruff check"
.venv/bin/ruff check .
log "ruff format --check"
.venv/bin/ruff format --check .
log "mypy"
.venv/bin/mypy

rc=0
pytest_run() {  # name, then pytest arguments
  local name=$1 status; shift
  log "pytest $name"
  set +e
  .venv/bin/python -m pytest -ra --junitxml="test-output/junit-$name.xml" "$@"
  status=$?
  set -e
  if [ $status -eq 5 ]; then log "pytest $name collected no tests: that is a failure"; status=1; fi
  [ $status -eq 0 ] || rc=1
}
pytest_run unit -n 2 tests/unit

log "waiting for the images"
if ! wait $images_pid; then
  tail -40 test-output/images.log >&2
  log "building the images failed (full log: test-output/images.log)"
  exit 1
fi
trap - EXIT
pytest_run e2e -n "${LABGPU_TEST_WORKERS:-3}" --dist loadfile tests/e2e tests/security tests/browser

# A subclass must not break what it inherits: DockerSpawner's own test suite (from its sdist)
# against GPUDockerSpawner; every test that passes with DockerSpawner must pass with ours.
log "DockerSpawner's upstream suite against GPUDockerSpawner"
.venv/bin/python -m tests.upstream.run || rc=1
exit $rc
