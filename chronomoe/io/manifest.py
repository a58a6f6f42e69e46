"""Run manifest: who, what and how a run was recorded."""

from __future__ import annotations

import platform
import subprocess
import time
from typing import Any


def get_git_commit() -> str:
    """Short commit hash of the current directory's git checkout, or ``"unknown"``."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def create_run_manifest(
    run_id: str,
    model_name: str,
    config: dict[str, Any] | None = None,
    git_commit: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest dict: run identity, the user's config verbatim, code and library versions.

    ``extra`` keys (e.g. ``rules``, ``n_layers``) are added at top level.
    """
    from .._version import __version__

    return {
        "run_id": run_id,
        "model_name": model_name,
        "created_at": time.time(),
        "config": dict(config or {}),
        "git_commit": get_git_commit() if git_commit is None else git_commit,
        "chronomoe_version": __version__,
        "python_version": platform.python_version(),
        **extra,
    }
