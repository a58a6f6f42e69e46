"""Expert health: per-expert weight and gradient norms, and the *silent expert* signal balance metrics miss.

Balance metrics see an expert that receives its share of tokens as healthy.
It can still have stopped learning: its gate weight is near zero (an expert
kept selected by a selection bias while its score is tiny scales its output,
and so its gradient, by that score), its activations died, its parameters
were frozen or left out of the optimizer. Its gradient then vanishes while
its peers' do not. This module holds what is recorded per snapshot
(:class:`ExpertHealthRecord`, one line of ``expert_health.jsonl``) and the
signal; :mod:`chronomoe.capture.expert_norms` measures the norms on the device.

**The signal.** In a snapshot window, expert ``e`` of a layer is *silent* when

1. it receives tokens: its share of the layer's tokens is at least
   ``min_token_share`` times the uniform share ``1 / n_experts`` (so dead and
   under-used experts, which balance metrics already report, are not counted
   twice), and
2. it learns nothing: its gradient norm (root mean square over the window's
   optimizer steps) is at most ``silent_grad_ratio`` times the median
   gradient norm of the layer's experts that receive tokens.

The comparison is with the layer's own experts because they share the loss
scale, the learning rate schedule and gradient clipping: a gradient 100 times
smaller than its peers' while receiving as many tokens is not a scale
effect. An expert whose gradient is not finite (NaN or inf) is reported apart
(``nonfinite_grad_experts``), never as silent. A layer with fewer than 2
experts receiving tokens, or whose median is 0 or not finite, has no silent
expert (there is no peer to compare with).

Weight norms complete the picture: an expert that receives no gradient under
AdamW's weight decay shrinks steadily, snapshot after snapshot, while its
peers' norms hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

EXPERT_HEALTH_FILE = "expert_health.jsonl"
"""The run folder's file of :class:`ExpertHealthRecord` s, one line per TRAIN snapshot."""


class ExpertHealthConfig(BaseModel):
    """Thresholds of the silent-expert signal (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    silent_grad_ratio: float = Field(
        0.01, gt=0, lt=1, description="an expert's gradient norm at most this times its layer's median is silent"
    )
    min_token_share: float = Field(
        0.1,
        gt=0,
        description="an expert receives tokens when its share is at least this times the uniform share 1/n_experts",
    )


class LayerExpertHealth(BaseModel):
    """One layer's experts in one snapshot window. Lists are indexed by expert id; ``None`` is a value
    that is not finite."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer_id: int = Field(ge=0, description="the layer's id in events and snapshots")
    n_experts: int = Field(ge=1, description="routed experts of the layer")
    weight_norm: list[float | None] = Field(description="L2 norm of each expert's parameters at the snapshot")
    grad_norm: list[float | None] | None = Field(
        description="root mean square, over the window's optimizer steps, of each expert's gradient L2 norm; "
        "None when no optimizer step was seen in the window"
    )
    grad_steps: int = Field(ge=0, description="optimizer steps whose gradients the window holds")
    token_counts: list[int] = Field(description="tokens each expert received in the window")
    silent_experts: list[int] = Field(description="experts that receive tokens and learn nothing (module docstring)")
    nonfinite_grad_experts: list[int] = Field(description="experts whose gradient norm is NaN or inf")


class ExpertHealthRecord(BaseModel):
    """The expert health of every tracked layer at one TRAIN snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(description="the run")
    step: int = Field(ge=0, description="the snapshot's step")
    silent_grad_ratio: float = Field(description="the threshold the signal used")
    min_token_share: float = Field(description="the threshold the signal used")
    layers: list[LayerExpertHealth] = Field(description="tracked layers, in layer order")

    @property
    def silent(self) -> dict[int, list[int]]:
        """``{layer_id: silent expert ids}`` of the layers that have any."""
        return {layer.layer_id: layer.silent_experts for layer in self.layers if layer.silent_experts}


def silent_experts(
    token_counts: Sequence[int] | np.ndarray,
    grad_norm: Sequence[float] | np.ndarray,
    config: ExpertHealthConfig | None = None,
) -> list[int]:
    """The silent experts of one layer in one window (see the module docstring).

    Args:
        token_counts: ``[n_experts]`` tokens each expert received.
        grad_norm: ``[n_experts]`` gradient norm of each expert (any non-negative scale; NaN/inf allowed).
    """
    config = config or ExpertHealthConfig()
    counts = np.asarray(token_counts, dtype=np.float64)
    grads = np.asarray(grad_norm, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return []
    receiving = counts / total >= config.min_token_share / counts.shape[0]
    peers = grads[receiving & np.isfinite(grads)]
    if peers.shape[0] < 2:
        return []
    median = float(np.median(peers))
    if not (median > 0 and math.isfinite(median)):
        return []
    silent = receiving & np.isfinite(grads) & (grads <= config.silent_grad_ratio * median)
    return [int(expert) for expert in np.flatnonzero(silent)]


def finite_or_none(values: np.ndarray) -> list[float | None]:
    """A float list with ``None`` for every value that is not finite (JSON has no NaN)."""
    return [float(value) if math.isfinite(value) else None for value in values.tolist()]


def layer_health(
    layer_id: int,
    weight_norm: np.ndarray,
    grad_norm: np.ndarray | None,
    grad_steps: int,
    token_counts: np.ndarray,
    config: ExpertHealthConfig,
) -> LayerExpertHealth:
    """A layer's :class:`LayerExpertHealth` from its ``[n_experts]`` norms and counts."""
    nonfinite = [] if grad_norm is None else [int(e) for e in np.flatnonzero(~np.isfinite(grad_norm))]
    return LayerExpertHealth(
        layer_id=layer_id,
        n_experts=int(weight_norm.shape[0]),
        weight_norm=finite_or_none(weight_norm),
        grad_norm=None if grad_norm is None else finite_or_none(grad_norm),
        grad_steps=grad_steps,
        token_counts=[int(count) for count in token_counts.tolist()],
        silent_experts=[] if grad_norm is None else silent_experts(token_counts, grad_norm, config),
        nonfinite_grad_experts=nonfinite,
    )
