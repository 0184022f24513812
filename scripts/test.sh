#!/usr/bin/env bash
# Set up and run all the checks: ruff (lint and format), mypy, then the tests: unit, end-to-end
# (real Docker, JupyterHub, proxy) and browser (Playwright + Chromium), then DockerSpawner's own
# upstream suite against our spawner (tests/upstream/run.py). With CI=true a missing real part fails
# the run instead of skipping.
#   scripts/test.sh [pytest args...]     (pytest args skip the lint and type steps: a focused run)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p test-output
if [ $# -eq 0 ]; then
  echo "[test] ruff check" >&2
  .venv/bin/ruff check .
  echo "[test] ruff format --check" >&2
  .venv/bin/ruff format --check .
  echo "[test] mypy" >&2
  .venv/bin/mypy
fi
set +e
.venv/bin/python -m pytest -ra --junitxml=test-output/junit.xml "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
  exit 1
fi
if [ $# -eq 0 ]; then
  # A subclass must not break what it inherits: DockerSpawner's own test suite (from its sdist)
  # against GPUDockerSpawner; every test that passes with DockerSpawner must pass with ours.
  echo "[test] DockerSpawner's upstream suite against GPUDockerSpawner" >&2
  .venv/bin/python -m tests.upstream.run || rc=1
fi
exit $rc
