"""The data the HTML page's script draws: one JSON object per run, large arrays as base64 of packed numbers.

Encodings (all little-endian, row-major, so index ``[c, l]`` is ``c * L + l``):

* per-column metrics ``[C, L]`` as float32 (NaN: no data): ``diversity``
  (Neff / n), ``top2``, ``maxVio``, controller ``pressure`` and ``bias``;
  ``states`` as int8 (-1 no data, 0 nominal, 1 pre_collapse, 2 collapse_confirmed);
* expert loads ``[L, W, C']`` as uint8 codes: 0 no data (or no such expert),
  1 a dead expert (no token in the column), and 2..255 the expert's load
  relative to a balanced one (``share * n_experts``) on a log2 scale from
  ``-loadRange`` to ``+loadRange`` (:func:`encode_loads`). Their columns
  ``C'`` are those of the metrics, merged in pairs while the run's cells
  would exceed its share of :data:`MAX_EXPERT_CELLS` (so a 58 x 256 run
  stays a few MB).
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from .columns import column_edges
from .rows import STATE_CODES
from .rundata import RunColumns, RunData

MAX_EXPERT_CELLS = 6_000_000
"""Expert x column cells of all the runs of one page together: 6 MB of codes, 8 MB in base64."""
LOAD_CODES = 254
"""Codes 2..255 of a load; 0 and 1 are no data and dead."""


def packed(values: np.ndarray, dtype: str) -> str:
    """``values`` as base64 of little-endian ``dtype`` (``'<f4'``, ``'i1'``, ``'u1'``), row-major."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def load_range(n_experts: np.ndarray) -> float:
    """The log2 half-range of the load codes: log2 of the widest layer's expert count, between 1 and 8."""
    return float(min(max(math.log2(max(int(n_experts.max(initial=2)), 2)), 1.0), 8.0))


def encode_loads(shares: np.ndarray, n_experts: np.ndarray, half_range: float) -> np.ndarray:
    """uint8 codes ``[L, W, C]`` of shares ``[C, L, W]`` (NaN: no data) of layers of ``n_experts`` ``[L]``.

    Code 0: no data or an expert beyond the layer's ``n_experts``; 1: share 0;
    ``2 + round((clip(log2(share * n), -r, r) + r) / 2r * 253)`` otherwise.
    """
    loads = shares * n_experts[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (np.clip(np.log2(loads), -half_range, half_range) + half_range) / (2 * half_range)
    codes = np.where(np.isnan(shares), 0, np.where(loads > 0, 2 + np.rint(scaled * (LOAD_CODES - 1)), 1))
    beyond = np.arange(shares.shape[2])[None, None, :] >= n_experts[None, :, None]
    codes[np.broadcast_to(beyond, codes.shape)] = 0
    return np.transpose(codes, (1, 2, 0)).astype(np.uint8)


def expert_columns(run: RunData, max_cells: int) -> tuple[int, np.ndarray]:
    """``(width, shares [C', L, W])``: the run's expert shares in columns of ``width`` snapshots, columns merged
    in pairs until ``C' * L * W <= max_cells`` (NaN where a layer had no token in a column)."""
    tokens, width = run.expert_tokens, run.column_width
    _, n_layers, n_wide = tokens.shape
    while len(tokens) > 1 and len(tokens) * n_layers * n_wide > max_cells:
        if len(tokens) % 2:
            tokens = np.concatenate([tokens, np.zeros_like(tokens[:1])])
        tokens = tokens[0::2] + tokens[1::2]
        width *= 2
    totals = tokens.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, tokens / np.maximum(totals, 1), np.nan)
    return width, shares


def _floats_or_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(value) else round(value, 6) for value in values.tolist()]


def run_payload(run: RunData, columns: RunColumns, label: str, color: str, max_expert_cells: int) -> dict[str, Any]:
    """The JSON-ready object of one run (see the module docstring for the encodings)."""
    expert_width, shares = expert_columns(run, max_expert_cells)
    expert_first, expert_last = column_edges(run.steps, expert_width)
    half_range = load_range(run.n_experts)
    payload: dict[str, Any] = {
        "label": label,
        "runId": run.run_id,
        "model": run.model_name,
        "color": color,
        "layers": run.layer_ids.tolist(),
        "nExperts": run.n_experts.tolist(),
        "steps": run.steps.tolist(),
        "trainLoss": _floats_or_none(run.train_loss),
        "valLoss": _floats_or_none(run.val_loss),
        "columns": {"width": columns.width, "first": columns.first_step.tolist(), "last": columns.last_step.tolist()},
        "metrics": {
            "diversity": packed(columns.diversity, "<f4"),
            "top2": packed(columns.top2, "<f4"),
            "maxVio": packed(columns.max_vio, "<f4"),
            "states": packed(columns.states, "i1"),
        },
        "experts": {
            "width": expert_width,
            "first": expert_first.tolist(),
            "last": expert_last.tolist(),
            "wide": int(shares.shape[2]),
            "loadRange": half_range,
            "loads": packed(encode_loads(shares, run.n_experts, half_range), "u1"),
        },
        "transitions": [[t.step, t.layer_id, STATE_CODES[t.source], STATE_CODES[t.dest]] for t in run.transitions],
        "controller": None,
    }
    controller = run.controller
    if controller is not None and columns.pressure is not None and columns.bias is not None:
        payload["controller"] = {
            "names": list(controller.controllers),
            "decisions": controller.decisions,
            "totals": controller.action_totals,
            "applied": controller.applied,
            "dryRun": controller.dry_run,
            "pressure": packed(columns.pressure, "<f4"),
            "bias": packed(columns.bias, "<f4"),
            "actions": {name: counts.tolist() for name, counts in (columns.actions or {}).items()},
        }
    return payload
