"""CaptureSession: one run's sync-free capture, from ``record()`` calls to the counts of a snapshot window.

It owns the layer layout, the :class:`~chronomoe.capture.recorder.RoutingRecorder`
(created on the device of the first recorded tensor, or of the attached
model), and the window: the counts of every step drained from the device
since the last snapshot. Each drain also yields the drained steps'
:class:`~chronomoe.events.RoutingEvent` s, one per recorded (step, mode,
layer), for the run's event log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..events import MODES, RoutingEvent
from .recorder import RoutingRecorder, StagedSteps

logger = logging.getLogger(__name__)

ReduceFactory = Callable[[Sequence[int], Sequence[int], int], Callable[[torch.Tensor], None]]
"""``factory(layer_ids, n_experts, capacity)`` -> the recorder's cross-rank ``reduce`` hook."""


@dataclass(frozen=True)
class LayerLayout:
    """The recorded MoE layers, by position: ``layer_ids[i]`` has ``n_experts[i]`` experts and ``top_k[i]``."""

    layer_ids: tuple[int, ...]
    n_experts: tuple[int, ...]
    top_k: tuple[int, ...]

    @classmethod
    def of(cls, n_experts: Sequence[int], layer_ids: Sequence[int] | None, top_k: int | Sequence[int]) -> LayerLayout:
        widths = tuple(int(n) for n in n_experts)
        ids = tuple(range(len(widths))) if layer_ids is None else tuple(int(i) for i in layer_ids)
        per_layer = (int(top_k),) * len(widths) if isinstance(top_k, int) else tuple(int(k) for k in top_k)
        if not widths or min(widths) < 1:
            raise InvalidInputError("n_experts", list(widths), "must list at least one layer, each with >= 1 expert")
        if len(ids) != len(widths) or len(set(ids)) != len(ids) or min(ids) < 0:
            raise InvalidInputError("layer_ids", list(ids), f"must be {len(widths)} distinct ids >= 0")
        if len(per_layer) != len(widths) or min(per_layer) < 1:
            raise InvalidInputError(
                "top_k", top_k, f"must be >= 1, one for all layers or one per layer ({len(widths)})"
            )
        return cls(ids, widths, per_layer)

    @property
    def layers(self) -> dict[int, int]:
        """``{layer_id: n_experts}``."""
        return dict(zip(self.layer_ids, self.n_experts, strict=True))


@dataclass
class Window:
    """Counts since the last snapshot, per mode (index in :data:`~chronomoe.events.MODES`).

    Attributes:
        counts: ``[2, L, width]`` int64 tokens per (mode, layer position, expert).
        calls: ``[2, L]`` int64 ``record`` calls per (mode, layer position).
        out_of_range: ``[2]`` int64 expert ids outside their layer's range.
    """

    counts: np.ndarray
    calls: np.ndarray
    out_of_range: np.ndarray

    @classmethod
    def empty(cls, n_layers: int, width: int) -> Window:
        return cls(
            np.zeros((len(MODES), n_layers, width), dtype=np.int64),
            np.zeros((len(MODES), n_layers), dtype=np.int64),
            np.zeros(len(MODES), dtype=np.int64),
        )

    def recorded(self, mode: str) -> bool:
        """Whether any forward of ``mode`` was recorded in this window."""
        return bool(self.calls[MODES.index(mode)].any())


class CaptureSession:
    """The sync-free capture of one run (see the module docstring).

    Args:
        run_id: stamped on the events.
        layout: the recorded layers.
        capacity: steps the recorder stages on the device between drains.
        reduce_factory: under torch.distributed, makes the recorder's
            cross-rank reduction for the layout (``None`` in one process).
        device: create the recorder right away on this device (else on the
            device of the first recorded tensor).
    """

    def __init__(
        self,
        run_id: str,
        layout: LayerLayout,
        capacity: int,
        reduce_factory: ReduceFactory | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.run_id = run_id
        self.layout = layout
        self.capacity = capacity
        self._reduce_factory = reduce_factory
        self.recorder: RoutingRecorder | None = None
        self._window = Window.empty(len(layout.n_experts), max(layout.n_experts))
        self._window_steps: tuple[int, int, int] | None = None  # (first, last, count) ended since take_window()
        if device is not None:
            self._make_recorder(device)

    @property
    def pending_steps(self) -> int:
        """Steps staged on the device, not drained yet."""
        return 0 if self.recorder is None else self.recorder.pending_steps

    def _make_recorder(self, device: torch.device | str) -> RoutingRecorder:
        layout = self.layout
        reduce = None
        if self._reduce_factory is not None:
            reduce = self._reduce_factory(layout.layer_ids, layout.n_experts, self.capacity)
        self.recorder = RoutingRecorder(
            layout.n_experts,
            device,
            layer_ids=layout.layer_ids,
            top_k=layout.top_k,
            capacity=self.capacity,
            reduce=reduce,
        )
        return self.recorder

    # -- the training step's path (sync-free) -----------------------------------------------
    def record(
        self,
        layer_id: int,
        indices: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        mode: str = "TRAIN",
    ) -> None:
        """Add one forward's dispatch of ``layer_id``; see :meth:`RoutingRecorder.record`.

        Checks tensor metadata only (never a value: that would synchronise).
        """
        tensor = indices if indices is not None else counts
        if isinstance(tensor, torch.Tensor):
            name = "indices" if indices is not None else "counts"
            if tensor.is_meta:
                raise InvalidInputError(f"{name}.device", "meta", "a meta tensor holds no values to record")
            if tensor.dtype == torch.bool or tensor.is_complex():
                raise InvalidInputError(f"{name}.dtype", str(tensor.dtype), "must be an integer or floating dtype")
        recorder = self.recorder
        if recorder is None:
            recorder = self._make_recorder(getattr(tensor, "device", "cpu"))
        recorder.record(layer_id, indices=indices, counts=counts, mode=mode)

    def end_step(self, step: int) -> list[RoutingEvent]:
        """Stage step ``step`` (sync-free); when that fills the ring, drain it: the drained steps' events."""
        if self.recorder is None:
            return []
        first, _, count = self._window_steps or (step, step, 0)
        self._window_steps = (first, step, count + 1)
        chunk = self.recorder.end_step(step)
        return [] if chunk is None else self._fold(chunk)

    # -- snapshot cadence -----------------------------------------------------------------------
    def drain(self) -> list[RoutingEvent]:
        """Copy every staged step to the host into the window (the one sync); their events."""
        return [] if self.recorder is None else self._fold(self.recorder.drain())

    def recorded(self, mode: str) -> bool:
        """Whether the window (the steps drained since the last snapshot) recorded any forward of ``mode``."""
        return self._window.recorded(mode)

    def take_window(self) -> Window:
        """The window since the last snapshot; the next one starts empty."""
        window = self._window
        self._window = Window.empty(window.calls.shape[1], window.counts.shape[2])
        self._window_steps = None
        return window

    def unsnapshotted_report(self) -> str | None:
        """What a window left untaken holds, for closing: the steps ended since the last
        :meth:`take_window` and the forwards recorded since the last ``end_step`` (a sync); ``None`` when
        nothing."""
        stray = 0 if self.recorder is None else self.recorder.forwards_since_last_step()
        parts = []
        if self._window_steps is not None:
            first, last, count = self._window_steps
            parts.append(f"{count} steps ({first}..{last}) ended after the last snapshot are in no snapshot")
        if stray:
            parts.append(f"{stray} record() calls after the last step() belong to no step and are not written")
        return "; ".join(parts) or None

    def _fold(self, chunk: StagedSteps) -> list[RoutingEvent]:
        """Add a drained chunk to the window; its events."""
        if not chunk.steps:
            return []
        negative = chunk.counts < 0  # [steps, modes, layers, experts]; record() cannot check values without a sync
        if negative.any():
            steps = np.asarray(chunk.steps)[negative.any(axis=(1, 2, 3))].tolist()
            layers = np.asarray(self.layout.layer_ids)[negative.any(axis=(0, 1, 3))].tolist()
            logger.error(
                "record(counts=...) gave negative counts: %d entries in layers %s at steps %s, clipped to 0",
                int(negative.sum()),
                layers,
                steps,
            )
            np.clip(chunk.counts, 0, None, out=chunk.counts)
        self._window.counts += chunk.window_totals()
        self._window.calls += chunk.calls.sum(axis=0)
        self._window.out_of_range += chunk.out_of_range.sum(axis=(0, 2))
        return self._events_of(chunk)

    def _events_of(self, chunk: StagedSteps) -> list[RoutingEvent]:
        """One RoutingEvent per recorded (step, mode, layer) of a chunk, in that order."""
        assert self.recorder is not None  # a chunk comes from the recorder
        layout, top_k = self.layout, self.recorder.top_k
        counts = chunk.counts
        counts.flags.writeable = False
        events = []
        for step_index, mode_index, position in np.argwhere(chunk.calls > 0).tolist():
            width = layout.n_experts[position]
            row = counts[step_index, mode_index, position, :width]
            events.append(
                RoutingEvent.trusted(
                    timestamp=chunk.timestamps[step_index],
                    run_id=self.run_id,
                    step=chunk.steps[step_index],
                    mode=MODES[mode_index],
                    layer_id=layout.layer_ids[position],
                    n_experts=width,
                    top_k=min(top_k[position], width),
                    expert_token_counts=row,
                    active_experts=tuple(np.flatnonzero(row).tolist()),
                    token_count=int(row.sum()),
                    router_prob_sums=None,
                    loss=None,
                    aux_loss=None,
                )
            )
        return events

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The window and the recorder's staged steps, as plain values and torch tensors (``weights_only``-safe)."""
        recorder_state = None
        if self.recorder is not None:
            recorder_state = {
                key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for key, value in self.recorder.state_dict().items()
            }
        return {
            "window": self._window.counts.tolist(),
            "window_calls": self._window.calls.tolist(),
            "window_out_of_range": self._window.out_of_range.tolist(),
            "recorder": recorder_state,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict`'s output; the recorder is made on ``device`` if there is none yet."""
        if state.get("window") is not None:
            self._window = Window(
                np.asarray(state["window"], dtype=np.int64),
                np.asarray(state["window_calls"], dtype=np.int64),
                np.asarray(state.get("window_out_of_range") or [0] * len(MODES), dtype=np.int64),
            )
        if state.get("recorder") is not None:
            recorder = self.recorder if self.recorder is not None else self._make_recorder(device)
            recorder.load_state_dict(state["recorder"])
