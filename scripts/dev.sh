#!/usr/bin/env bash
# One entry point for the two README commands. Creates .venv on first use and
# installs the project with its test dependencies, pinned by constraints.txt.
#   bash scripts/dev.sh demo [demo options]   run the main job (chronomoe demo)
#   bash scripts/dev.sh test [pytest options] run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp=$venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU build this kind of machine serves locally;
  # an unpinned torch would pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0 -c constraints.txt
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi

command=${1:-}
shift || true
case "$command" in
  demo) exec "$venv/bin/chronomoe" demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh demo|test [options]" >&2; exit 2 ;;
esac
