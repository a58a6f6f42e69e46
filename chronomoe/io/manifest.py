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


ARCHITECTURE_KEYS = {
    "n_layers": ("n_layer", "n_layers"),
    "n_experts_per_layer": ("n_experts_per_layer",),
    "top_k": ("top_k",),
    "capacity_factor": ("capacity_factor",),
}
"""The seed manifest's ``architecture`` entries and the config keys each is read from (the first present)."""

TRAINING_KEYS = (
    "aux_loss_weight",
    "use_aux_loss",
    "router_z_loss_weight",
    "use_router_z_loss",
    "learning_rate",
    "batch_size",
    "max_iters",
    "eval_interval",
)
"""The seed manifest's ``training`` entries, each read from the config key of the same name."""


def create_run_manifest(
    run_id: str,
    model_name: str,
    config: dict[str, Any] | None = None,
    git_commit: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest dict: run identity, the user's config, code and library versions.

    The seed's keys are kept: ``dataset``, ``seed``, ``architecture``
    (``n_layers`` from the config's ``n_layer`` or ``n_layers``,
    ``n_experts_per_layer``, ``top_k``, ``capacity_factor``) and ``training``
    (:data:`TRAINING_KEYS`), read from ``config``; a key the config lacks is
    ``None`` (the seed wrote a guessed default, such as seed 42, which a
    manifest must not claim). ``config`` itself is stored verbatim under
    ``config``; ``extra`` keys (e.g. ``rules``) are added at top level.
    """
    from .._version import __version__

    config = dict(config or {})
    return {
        "run_id": run_id,
        "model_name": model_name,
        "created_at": time.time(),
        "dataset": config.get("dataset"),
        "seed": config.get("seed"),
        "architecture": {
            name: next((config[key] for key in keys if key in config), None) for name, keys in ARCHITECTURE_KEYS.items()
        },
        "training": {name: config.get(name) for name in TRAINING_KEYS},
        "config": config,
        "git_commit": get_git_commit() if git_commit is None else git_commit,
        "chronomoe_version": __version__,
        "python_version": platform.python_version(),
        **extra,
    }
