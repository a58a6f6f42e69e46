#!/usr/bin/env bash
# One entry point for the README commands. Creates .venv on first use and
# installs the project with its test dependencies, pinned by constraints.txt.
#   bash scripts/dev.sh demo [demo options]   run the main job (chronomoe demo)
#   bash scripts/dev.sh test [pytest options] the whole test suite, then the lint and type checks
#   bash scripts/dev.sh lint                  ruff (lint and format) and mypy only
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp=$venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
  python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU build this kind of machine serves locally;
  # an unpinned torch would pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0 -c constraints.txt
  # Build-tool chatter (setuptools' deprecation notices) goes to a log, shown only when the install fails.
  if ! "${pip[@]}" -c constraints.txt -e ".[dev]" >"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2
    exit 1
  fi
  # torchtitan without its requirements (they pin datasets and fsspec against ours); the modules the tests
  # import need only what the dev extra adds (spmd_types, tyro, triton).
  "${pip[@]}" --no-deps -c constraints.txt torchtitan
  touch "$stamp"
fi

# mypy checks the package as it is installed: chronomoe/ with controller/, lens/ and specs/ inside it. A tree of
# links gives it that view of the checkout (what setuptools' package-dir does for an install).
typecheck() {
  local tree=build/typecheck
  rm -rf "$tree"
  mkdir -p "$tree/chronomoe"
  local entry
  for entry in chronomoe/*; do ln -s "$PWD/$entry" "$tree/chronomoe/"; done
  for entry in controller lens specs; do ln -s "$PWD/$entry" "$tree/chronomoe/$entry"; done
  (cd "$tree" && "../../$venv/bin/mypy" --config-file ../../pyproject.toml -p chronomoe)
}

lint() {
  local status=0
  "$venv/bin/ruff" check . || status=1
  "$venv/bin/ruff" format --check . || status=1
  typecheck || status=1
  return $status
}

command=${1:-}
shift || true
case "$command" in
  demo) exec "$venv/bin/chronomoe" demo "$@" ;;
  test)
    status=0
    "$venv/bin/python" -m pytest "$@" || status=$?
    lint || status=1
    exit $status
    ;;
  lint) lint ;;
  *) echo "usage: bash scripts/dev.sh demo|test|lint [options]" >&2; exit 2 ;;
esac
