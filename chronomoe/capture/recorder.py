"""RoutingRecorder: sync-free accumulation of tokens per expert on the model's device.

Hot path (every MoE layer, every forward) — :meth:`RoutingRecorder.record`:
a handful of element-wise kernels and one ``index_add_`` (or an add of a
counts vector) into a preallocated device buffer. It never reads a tensor
value on the host: no ``.item()``, ``.cpu()``, ``.tolist()``,
``torch.bincount``, ``nonzero`` or Python branch on tensor values.

Step boundary — :meth:`RoutingRecorder.end_step`: one device-to-device copy of
the step's counts into a staging ring, then a zero fill. Still no sync.

Drain — :meth:`RoutingRecorder.drain`, at each snapshot and whenever the ring
is full: one device-to-host copy of the staged steps (optionally reduced
across ranks first). This is the only synchronisation.

Buffer layout (int64): ``[steps, 2 modes, n_layers, width + 2]`` where
``width`` is the widest layer's expert count; column ``width`` counts expert
ids outside a layer's ``0..n_experts-1`` (reported at drain, never indexed
out of bounds), column ``width + 1`` counts ``record`` calls (so a step/layer
that was never recorded emits no event). Memory is fixed at construction:
``capacity`` steps of staging on the device; on the host only the chunk being
drained. Gradient accumulation sums the micro-batches of a step; forwards
re-run by activation checkpointing inside backward are not counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..events import MODES

logger = logging.getLogger(__name__)

_MODE_INDEX = {mode: index for index, mode in enumerate(MODES)}


@dataclass
class StagedSteps:
    """A drained chunk of per-step counts, on the host.

    Attributes:
        steps: ``[S]`` step numbers, in order.
        timestamps: ``[S]`` unix seconds at each step's end.
        counts: ``[S, 2, L, width]`` int64 tokens per (step, mode, layer, expert).
        calls: ``[S, 2, L]`` int64 record calls per (step, mode, layer).
        out_of_range: ``[S, 2, L]`` int64 expert ids outside the layer's range.
    """

    steps: list[int]
    timestamps: list[float]
    counts: np.ndarray
    calls: np.ndarray
    out_of_range: np.ndarray

    def window_totals(self) -> np.ndarray:
        """``[2, L, width]`` counts summed over the chunk's steps."""
        totals: np.ndarray = self.counts.sum(axis=0, dtype=np.int64)
        return totals


def _inside_backward() -> bool:
    """True while autograd runs backward (activation checkpointing re-runs forwards there)."""
    return torch._C._current_graph_task_id() != -1


@torch.library.custom_op("chronomoe::recording_gate", mutates_args=())
def _recording_gate(like: torch.Tensor) -> torch.Tensor:
    """0-d int64 on ``like``'s device: 0 while autograd runs backward, else 1.

    Under ``torch.compile`` Python runs only while tracing, so ``if
    _inside_backward()`` would be decided once and baked into the graph (and
    Dynamo cannot trace it: a graph break per layer). As an opaque op it is
    decided each time the graph runs, as a factor on the increments: no graph
    break (``fullgraph=True`` works), no sync (a fill kernel), and a compiled
    forward re-run by activation checkpointing is still not counted.
    """
    fill = torch.zeros if _inside_backward() else torch.ones
    return fill((), dtype=torch.int64, device=like.device)


@_recording_gate.register_fake
def _recording_gate_fake(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((), dtype=torch.int64)


class RoutingRecorder:
    """Per-layer tokens-per-expert counts for many layers, accumulated on one device.

    Args:
        n_experts: expert count of each layer, by layer position (``layer_ids``
            gives the layer id of each position; default ``0..L-1``).
        device: where the buffers live (the model's device).
        top_k: experts per token of each layer (or one for all), used for
            ``counts=`` records; ``indices=`` records read it from the last dim.
        capacity: steps staged on the device before a forced drain.
        reduce: optional ``callable(tensor) -> None`` applied in place to the
            staged buffer before it is copied to the host (the distributed
            all-reduce); called once per drain, never per step.
    """

    def __init__(
        self,
        n_experts: Sequence[int],
        device: torch.device | str = "cpu",
        *,
        layer_ids: Sequence[int] | None = None,
        top_k: int | Sequence[int] = 1,
        capacity: int = 128,
        reduce: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        n_experts = [int(n) for n in n_experts]
        if not n_experts or min(n_experts) < 1:
            raise InvalidInputError("n_experts", n_experts, "must list at least one layer, each with >= 1 expert")
        if capacity < 1:
            raise InvalidInputError("capacity", capacity, "must be >= 1")
        self.layer_ids = list(range(len(n_experts))) if layer_ids is None else [int(i) for i in layer_ids]
        if len(self.layer_ids) != len(n_experts) or len(set(self.layer_ids)) != len(self.layer_ids):
            raise InvalidInputError("layer_ids", self.layer_ids, f"must be {len(n_experts)} distinct ids")
        self.n_experts = n_experts
        self.top_k = [int(top_k)] * len(n_experts) if isinstance(top_k, int) else [int(k) for k in top_k]
        self.width = max(n_experts)
        self.capacity = capacity
        self.device = torch.device(device)
        self.reduce = reduce
        self._position = {layer_id: position for position, layer_id in enumerate(self.layer_ids)}
        shape = (len(MODES), len(n_experts), self.width + 2)
        self._current = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self._staged = torch.zeros((capacity, *shape), dtype=torch.int64, device=self.device)
        self._steps: list[int] = []
        self._timestamps: list[float] = []
        self._expert_range = torch.arange(self.width + 1, device=self.device)

    @property
    def n_layers(self) -> int:
        return len(self.n_experts)

    @property
    def pending_steps(self) -> int:
        """Steps staged on the device since the last drain."""
        return len(self._steps)

    def _slot(self, layer_id: int, mode: str) -> tuple[torch.Tensor, int]:
        position = self._position.get(layer_id)
        if position is None:
            raise InvalidInputError("layer_id", layer_id, f"is not a recorded layer ({self.layer_ids})")
        if mode not in _MODE_INDEX:
            raise InvalidInputError("mode", mode, f"must be one of {MODES}")
        return self._current[_MODE_INDEX[mode], position], self.n_experts[position]

    def record(
        self,
        layer_id: int,
        indices: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        mode: str = "TRAIN",
    ) -> None:
        """Add one forward's dispatch of ``layer_id`` to the current step (sync-free).

        Give exactly one of:
            indices: selected expert ids, any shape (top-k last), integer dtype.
            counts: ``[n_experts]`` tokens per expert after capacity drops.
        """
        if (indices is None) == (counts is None):
            raise InvalidInputError("indices/counts", None, "give exactly one of indices= or counts=")
        gate = _recording_gate(self._current) if torch.compiler.is_compiling() else None
        if gate is None and _inside_backward():
            return
        row, n_experts = self._slot(layer_id, mode)
        if indices is not None:
            if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
                raise InvalidInputError(
                    "indices", getattr(indices, "dtype", type(indices)), "must be an integer tensor of expert ids"
                )
            position = self._position[layer_id]
            # Written only on change: a Python side effect inside a torch.compile'd
            # activation-checkpoint region cannot be traced.
            if indices.dim() >= 2 and self.top_k[position] != indices.shape[-1]:
                self.top_k[position] = int(indices.shape[-1])
            flat = indices.detach().reshape(-1).to(device=self.device, dtype=torch.int64)
            outside = (flat < 0) | (flat >= n_experts)
            # Out-of-range ids land in the overflow column instead of indexing out of bounds.
            flat = torch.where(outside, self.width, flat)
            ones = torch.ones_like(flat) if gate is None else gate.expand_as(flat)
            row[: self.width + 1].index_add_(0, flat, ones)
        else:
            if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.shape[0] != n_experts:
                raise InvalidInputError(
                    "counts",
                    tuple(getattr(counts, "shape", ())),
                    f"must be a 1-D tensor of {n_experts} per-expert counts",
                )
            counts = counts.detach().to(device=self.device)
            if counts.is_floating_point():
                counts = counts.round()
            counts = counts.to(torch.int64)
            row[:n_experts].add_(counts if gate is None else counts * gate)
        row[self.width + 1].add_(1 if gate is None else gate)

    def forwards_since_last_step(self) -> int:
        """``record()`` calls since the last :meth:`end_step`, over every mode and layer (a sync)."""
        return int(self._current[..., self.width + 1].sum().item())

    def end_step(self, step: int) -> StagedSteps | None:
        """Close step ``step``: stage its counts (sync-free). Returns a drained chunk when the ring was full."""
        slot = len(self._steps)
        self._staged[slot].copy_(self._current)
        self._current.zero_()
        self._steps.append(int(step))
        self._timestamps.append(time.time())
        if len(self._steps) == self.capacity:
            return self.drain()
        return None

    def drain(self) -> StagedSteps:
        """Copy the staged steps to the host (the one synchronisation) and clear the ring."""
        used = len(self._steps)
        block = self._staged[:used]
        if self.reduce is not None:
            self.reduce(block)
        host = block.cpu().numpy()
        chunk = StagedSteps(
            steps=self._steps,
            timestamps=self._timestamps,
            counts=host[..., : self.width],
            calls=host[..., self.width + 1],
            out_of_range=host[..., self.width],
        )
        self._steps, self._timestamps = [], []
        if chunk.out_of_range.any():
            where = np.argwhere(chunk.out_of_range)
            step_index, mode_index, position = (int(i) for i in where[0])
            logger.error(
                "%d expert ids outside 0..n_experts-1 were ignored (first: step %d, %s, layer %d with %d experts)",
                int(chunk.out_of_range.sum()),
                chunk.steps[step_index],
                MODES[mode_index],
                self.layer_ids[position],
                self.n_experts[position],
            )
        return chunk

    def state_dict(self) -> dict[str, Any]:
        """The partial window: the current step's counts and the staged steps (host copies)."""
        used = len(self._steps)
        return {
            "layer_ids": list(self.layer_ids),
            "n_experts": list(self.n_experts),
            "current": self._current.cpu().numpy().copy(),
            "staged": self._staged[:used].cpu().numpy().copy(),
            "steps": list(self._steps),
            "timestamps": list(self._timestamps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["n_experts"]) != self.n_experts or list(state["layer_ids"]) != self.layer_ids:
            raise InvalidInputError(
                "state.n_experts", state["n_experts"], f"checkpoint layers differ from this recorder's {self.n_experts}"
            )
        staged = torch.as_tensor(np.asarray(state["staged"]), dtype=torch.int64)
        if staged.shape[0] > self.capacity:
            raise InvalidInputError(
                "state.staged", tuple(staged.shape), f"holds more than capacity={self.capacity} steps"
            )
        self._current.copy_(torch.as_tensor(np.asarray(state["current"]), dtype=torch.int64))
        self._staged[: staged.shape[0]].copy_(staged)
        self._steps = [int(step) for step in state["steps"]]
        self._timestamps = [float(t) for t in state["timestamps"]]
