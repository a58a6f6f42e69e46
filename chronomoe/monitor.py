"""Monitor: the one object a training loop uses.

capture -> snapshot -> alert machines -> bus -> subscribers (writer, lens,
controller, user handlers). Two ways to feed it:

* **events or counts you already have**: ``monitor.observe(events_or_counts,
  step, train_loss, val_loss)`` builds, publishes and writes a snapshot;
* **sync-free capture from the model**: ``monitor.attach(model)`` (or
  ``monitor.record(layer_id, indices=...)`` from your own code), then
  ``monitor.step(step)`` at the end of each training step and
  ``monitor.snapshot(step, train_loss, val_loss)`` at your evaluation cadence.

Either way, each snapshot is written (with its transitions) first, then
publishes its transitions (layer order) on ``"transition"`` and itself on
``"snapshot"``: it is on disk before any handler runs, and the writer's I/O
errors follow ``io_errors``, not the bus's handler isolation.
A handler stops the run with :meth:`Monitor.request_stop`; the training loop
checks :attr:`Monitor.should_stop`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .alerts import AlertBank, AlertRules, AlertState
from .bus import EventBus
from .controller import Controller, NoOpController, connect
from .errors import InvalidInputError
from .events import RoutingEvent
from .io import TelemetryWriter, create_run_manifest
from .snapshots import SystemSnapshot, build_snapshot, events_of_mode, validate_counts_matrix, window_counts

if TYPE_CHECKING:
    import torch

    from .capture.distributed import RankReduction
    from .capture.recorder import RoutingRecorder, StagedSteps
    from .lens import ChronoLens

logger = logging.getLogger(__name__)

MODES = ("TRAIN", "INFER")
STATE_DICT_VERSION = 1


class Monitor:
    """Routing telemetry for one run.

    Args:
        run_id: run identifier (the run folder's name when writing).
        output_dir: parent folder of run folders; ``None`` writes nothing.
        model_name: recorded in snapshots and the manifest.
        rules: alert rules (default: ``specs/default_rules.json``).
        n_experts: experts of each MoE layer, for :meth:`record` without
            :meth:`attach` (``attach`` finds them itself).
        top_k: experts per token, for ``record(counts=...)`` events.
        controller: subscribed to the bus (default :class:`NoOpController`;
            ``None`` for none).
        lens: a :class:`~chronomoe.lens.ChronoLens` following the bus
            (default: an :class:`~chronomoe.lens.IdentityLens`; ``None`` for none).
        strict_handlers: let handler exceptions propagate (for tests).
        write_events: also write ``routing_events.jsonl`` (per step and layer).
        fsync: ``fsync`` the run's files after every snapshot.
        io_errors: ``"log"`` (default): an I/O error while writing is logged
            once and the run goes on, failed records retried and, beyond a
            bound, dropped and counted in :attr:`dropped_records`;
            ``"raise"``: it propagates (see :class:`~chronomoe.io.TelemetryWriter`).
        capacity: steps the recorder stages on the device between drains.
        config: free-form run configuration stored in the manifest.
        process_group: under torch.distributed (initialised before the
            Monitor is created), the group whose ranks' counts are summed at
            each snapshot (default: the world); see ``docs/distributed.md``.
        expert_ids: expert parallelism: global ids of this rank's experts when
            it records local ids (a sequence, or ``{layer_id: sequence}``).
        count_tokens: ``False`` on a rank whose routing replicates another's
            (tensor-parallel peers): it joins the collectives, adds no tokens.
        write_on_all_ranks: every rank writes (to ``output_dir/rank<r>/``);
            by default only rank 0 of the group writes.
        collective_timeout: seconds a collective waits for the other ranks
            before raising (``None``: the process group's timeout).
    """

    def __init__(
        self,
        run_id: str = "run",
        output_dir: str | os.PathLike | None = None,
        model_name: str = "",
        rules: AlertRules | None = None,
        *,
        n_experts: Sequence[int] | None = None,
        top_k: int | Sequence[int] = 1,
        controller: Controller | None | str = "noop",
        lens: "ChronoLens | None | str" = "identity",
        strict_handlers: bool = False,
        write_events: bool = True,
        fsync: bool = False,
        io_errors: str = "log",
        capacity: int = 128,
        config: dict[str, Any] | None = None,
        process_group: Any = None,
        expert_ids: Sequence[int] | dict[int, Sequence[int]] | None = None,
        count_tokens: bool = True,
        write_on_all_ranks: bool = False,
        collective_timeout: float | None = None,
    ) -> None:
        self.run_id = run_id
        self.model_name = model_name
        self.rules = rules if rules is not None else AlertRules.default()
        self.bus = EventBus(strict=strict_handlers)
        self.banks = {mode: AlertBank(self.rules) for mode in MODES}
        self.write_events = write_events
        self.capacity = capacity
        self.stop_reason: str | None = None
        self.last_snapshot: SystemSnapshot | None = None
        self.recorder: RoutingRecorder | None = None
        self._recorder_layout: tuple[list[int], list[int], int | Sequence[int]] | None = None
        if n_experts is not None:
            self._recorder_layout = (list(range(len(n_experts))), [int(n) for n in n_experts], top_k)
        self._window: np.ndarray | None = None  # [2, L, width] counts since the last snapshot
        self._window_calls: np.ndarray | None = None  # [2, L] record calls since the last snapshot
        self._window_out_of_range: np.ndarray | None = None  # [2] out-of-range expert ids since the last snapshot
        self._earlier_dropped_records = 0  # dropped by the writers of the run before a resume
        self._last_snapshot_step: dict[str, int | None] = {mode: None for mode in MODES}
        self._observed_widths: dict[int, int] = {}  # expert count of each layer observe() saw, when none were declared
        self._attachment = None
        self._collective: RankReduction | None = None
        # torch.distributed can only be initialised once torch is imported; importing it otherwise costs seconds.
        if "torch" in sys.modules or process_group is not None or expert_ids is not None or not count_tokens:
            from .capture.distributed import rank_reduction

            self._collective = rank_reduction(
                process_group, timeout_s=collective_timeout, expert_ids=expert_ids,
                count_tokens=count_tokens, on_stop=self._stop,
            )
        if self._collective is not None:
            output_dir = self._collective.output_dir_of_rank(output_dir, write_on_all_ranks)

        self.writer: TelemetryWriter | None = None
        if output_dir is not None:
            self.writer = TelemetryWriter(run_id, output_dir, fsync=fsync, on_error=io_errors)
            self.writer.write_manifest(
                create_run_manifest(run_id, model_name, config, rules=self.rules.model_dump())
            )

        self.controller = NoOpController() if controller == "noop" else controller
        if self.controller is not None:
            connect(self.bus, self.controller)
        if lens == "identity":
            from .lens import IdentityLens

            lens = IdentityLens()
        self.lens = lens
        if self.lens is not None:
            self.lens.follow(self.bus)

    # -- stopping -------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True once a handler called :meth:`request_stop` (under torch.distributed: once the group agreed)."""
        return self.stop_reason is not None

    def request_stop(self, reason: str = "requested by a handler") -> None:
        """Ask the training loop to stop (e.g. from a handler on confirmed collapse).

        Under torch.distributed every rank of the group sees :attr:`should_stop`
        turn True inside the same later call: the next ``snapshot()`` (or
        ``observe()``, or a ``step()`` that drains a full staging ring).
        """
        if self._collective is not None:
            self._collective.request_stop(reason)
        else:
            self._stop(reason)

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.warning("run %s: stop requested: %s", self.run_id, reason)

    @property
    def dropped_records(self) -> int:
        """Records the run's writers dropped after I/O errors (cumulative across resumes from ``state_dict``)."""
        return self._earlier_dropped_records + (0 if self.writer is None else self.writer.dropped_records)

    def state(self, layer_id: int, mode: str = "TRAIN") -> AlertState:
        """Current alert state of ``layer_id`` (``nominal`` for a layer never seen)."""
        bank = self.banks[mode]
        return bank[layer_id].alert_state if layer_id in bank else AlertState.NOMINAL

    # -- path 1: events or counts in hand ------------------------------------
    def observe(
        self,
        events_or_counts: Sequence[RoutingEvent] | np.ndarray | Sequence[Sequence[int]],
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        *,
        mode: str = "TRAIN",
        n_layers: int | None = None,
    ) -> SystemSnapshot:
        """Snapshot a window given as routing events or as summed counts ``[n_layers, n_experts]``."""
        self._check_snapshot_call(mode, step, train_loss, val_loss)
        if isinstance(events_or_counts, np.ndarray):
            items = events_or_counts
        else:
            try:
                items = list(events_or_counts)
            except TypeError:
                raise InvalidInputError(
                    "events_or_counts", events_or_counts, "must be RoutingEvents or a [n_layers, n_experts] counts matrix"
                ) from None
        # An empty list is a window without events (layers up to n_layers are no_data).
        if isinstance(items, list) and (not items or isinstance(items[0], RoutingEvent)):
            stray = next((index for index, item in enumerate(items) if not isinstance(item, RoutingEvent)), None)
            if stray is not None:
                raise InvalidInputError(f"events_or_counts[{stray}]", items[stray], "is not a RoutingEvent, unlike the first")
            window = events_of_mode(items, mode)
            counts, n_experts, layer_ids = window_counts(window, n_layers)
            reported = np.isin(layer_ids, [event.layer_id for event in window])
            self._check_layers(layer_ids[reported], n_experts[reported])
            # Under torch.distributed these are one rank's events; the reduced snapshot is what gets written.
            if self.writer is not None and self.write_events and self._collective is None:
                self.writer.write_events_batch(items)
        else:
            counts, n_experts = validate_counts_matrix(items)
            layer_ids = np.arange(len(counts))
            reported = np.ones(len(counts), dtype=bool)
            self._check_layers(layer_ids, n_experts)
        if self._collective is not None:
            counts, n_experts, layer_ids = self._collective.reduce_window(counts, n_experts, reported, step=step, mode=mode)
        return self._publish_snapshot(mode, counts, n_experts, layer_ids, step, train_loss, val_loss)

    def _check_snapshot_call(self, mode: str, step: int, train_loss: float | None, val_loss: float | None) -> None:
        """Refuse a snapshot's arguments before anything is consumed or written, so that a corrected
        retry still holds the window: a mode other than TRAIN/INFER, a loss that is not a finite number,
        a step that is not an integer above the previous snapshot's of that mode."""
        if mode not in MODES:
            raise InvalidInputError("mode", mode, f"must be one of {', '.join(MODES)}")
        for field, loss in (("train_loss", train_loss), ("val_loss", val_loss)):
            if loss is not None and not (isinstance(loss, numbers.Real) and math.isfinite(loss)):
                raise InvalidInputError(field, loss, "must be a finite number or None")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InvalidInputError("step", step, "must be a non-negative integer")
        previous = self._last_snapshot_step[mode]
        if previous is not None and step <= previous:
            raise InvalidInputError("step", step, f"must be above the previous {mode} snapshot's step {previous}")

    def _check_layers(self, layer_ids: np.ndarray, n_experts: np.ndarray) -> None:
        """Refuse layers that contradict the declared ones (``n_experts=`` or ``attach``) or, when none
        were declared, the expert counts that earlier ``observe`` calls gave them."""
        declared = self._recorder_layout
        known = dict(zip(declared[0], declared[1])) if declared is not None else self._observed_widths
        new = {}
        for layer_id, width in zip(layer_ids.tolist(), n_experts.tolist()):
            expected = known.get(layer_id)
            if expected is None and declared is not None:
                raise InvalidInputError("layer_id", layer_id, f"is not a declared MoE layer (declared: {declared[0]})")
            if expected is not None and width != expected:
                raise InvalidInputError(
                    f"n_experts of layer {layer_id}", width, f"differs from the layer's {expected} experts"
                )
            new[layer_id] = width
        if declared is None:
            self._observed_widths.update(new)

    def _publish_snapshot(
        self, mode, counts, n_experts, layer_ids, step, train_loss, val_loss, timestamp=None, out_of_range_expert_ids=0
    ) -> SystemSnapshot:
        snapshot = build_snapshot(
            self.banks[mode], counts, n_experts, layer_ids, step=step, run_id=self.run_id,
            model_name=self.model_name, mode=mode, train_loss=train_loss, val_loss=val_loss,
            timestamp=timestamp, dropped_records=self.dropped_records,
            out_of_range_expert_ids=out_of_range_expert_ids,
        )
        if self.writer is not None:
            self.writer.write_snapshot(snapshot)
        for transition in snapshot.transitions:
            self.bus.publish("transition", transition)
        self.bus.publish("snapshot", snapshot)
        self._last_snapshot_step[mode] = step
        if mode == "TRAIN":
            self.last_snapshot = snapshot
        return snapshot

    # -- path 2: sync-free capture ---------------------------------------------
    def configure_capture(
        self,
        n_experts: Sequence[int],
        layer_ids: Sequence[int] | None = None,
        top_k: int | Sequence[int] = 1,
        device: "torch.device | str | None" = None,
    ) -> None:
        """Declare the MoE layers to record (``attach`` calls this). Buffers are made on first record."""
        if self.recorder is not None and self.recorder.pending_steps:
            raise InvalidInputError("n_experts", list(n_experts), "cannot change layers in the middle of a window")
        ids = list(range(len(n_experts))) if layer_ids is None else [int(i) for i in layer_ids]
        self._recorder_layout = (ids, [int(n) for n in n_experts], top_k)
        self.recorder = None
        if device is not None:
            self._make_recorder(device)

    def _make_recorder(self, device: "torch.device | str") -> "RoutingRecorder":
        from .capture.recorder import RoutingRecorder

        if self._recorder_layout is None:
            raise InvalidInputError(
                "n_experts", None, "unknown: pass Monitor(n_experts=[...]) or call monitor.attach(model) before record()"
            )
        layer_ids, n_experts, top_k = self._recorder_layout
        self.recorder = RoutingRecorder(
            n_experts, device, layer_ids=layer_ids, top_k=top_k, capacity=self.capacity,
            reduce=self._reduce_hook(),
        )
        return self.recorder

    def _reduce_hook(self) -> Callable[["torch.Tensor"], None] | None:
        """Cross-rank reduction of staged counts (none for a single process)."""
        if self._collective is None:
            return None
        layer_ids, n_experts, _ = self._recorder_layout
        return self._collective.staged_reducer(layer_ids, n_experts, self.capacity)

    def record(
        self,
        layer_id: int,
        indices: "torch.Tensor | None" = None,
        counts: "torch.Tensor | None" = None,
        mode: str = "TRAIN",
    ) -> None:
        """Add one forward's dispatch of ``layer_id`` (sync-free); see :class:`~chronomoe.capture.RoutingRecorder`.

        Expert ids outside ``0..n_experts-1`` are not counted in any layer;
        the next snapshot reports how many in ``out_of_range_expert_ids``.
        """
        import torch

        tensor = indices if indices is not None else counts
        # Metadata checks only (no device sync); the recorder checks the rest.
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

    def step(self, step: int) -> None:
        """End of training step ``step``: stage its counts (sync-free unless the staging ring is full)."""
        if self.recorder is None:
            return
        if self._collective is not None:
            self._collective.expect(step, "step")
        chunk = self.recorder.end_step(step)
        if chunk is not None:
            self._consume(chunk)

    def snapshot(
        self, step: int, train_loss: float | None = None, val_loss: float | None = None
    ) -> SystemSnapshot:
        """Close the window: drain the recorder, write its events, snapshot TRAIN (and INFER if any)."""
        if self.recorder is None:
            raise InvalidInputError("recorder", None, "nothing recorded yet: call record()/attach() and step() first")
        if self._collective is not None:
            self._collective.expect(step, "snapshot")
        self._consume(self.recorder.drain())
        # After the drain (under torch.distributed it is a collective every rank makes), before the
        # window is taken: a refused call leaves the window for the corrected retry.
        self._check_snapshot_call("TRAIN", step, train_loss, val_loss)
        if self._window_calls is not None and self._window_calls[MODES.index("INFER")].any():
            self._check_snapshot_call("INFER", step, None, val_loss)
        window, calls, out_of_range = self._window, self._window_calls, self._window_out_of_range
        self._window = self._window_calls = self._window_out_of_range = None
        recorder = self.recorder
        n_experts = np.asarray(recorder.n_experts, dtype=np.int64)
        layer_ids = np.asarray(recorder.layer_ids, dtype=np.int64)
        if window is None:
            window = np.zeros((len(MODES), recorder.n_layers, recorder.width), dtype=np.int64)
            calls = np.zeros((len(MODES), recorder.n_layers), dtype=np.int64)
        if out_of_range is None:
            out_of_range = np.zeros(len(MODES), dtype=np.int64)
        if calls[MODES.index("INFER")].any():
            self._publish_snapshot(
                "INFER", window[1], n_experts, layer_ids, step, None, val_loss, out_of_range_expert_ids=int(out_of_range[1])
            )
        return self._publish_snapshot(
            "TRAIN", window[0], n_experts, layer_ids, step, train_loss, val_loss, out_of_range_expert_ids=int(out_of_range[0])
        )

    def _consume(self, chunk: "StagedSteps") -> None:
        """Fold a drained chunk into the window and write its events."""
        if not chunk.steps:
            return
        negative = chunk.counts < 0  # [steps, modes, layers, experts]; record() cannot check values without a sync
        if negative.any():
            steps = np.asarray(chunk.steps)[negative.any(axis=(1, 2, 3))].tolist()
            layers = np.asarray(self.recorder.layer_ids)[negative.any(axis=(0, 1, 3))].tolist()
            logger.error(
                "record(counts=...) gave negative counts: %d entries in layers %s at steps %s, clipped to 0",
                int(negative.sum()), layers, steps,
            )
            np.clip(chunk.counts, 0, None, out=chunk.counts)
        totals, calls = chunk.window_totals(), chunk.calls.sum(axis=0)
        out_of_range = chunk.out_of_range.sum(axis=(0, 2))
        self._window = totals if self._window is None else self._window + totals
        self._window_calls = calls if self._window_calls is None else self._window_calls + calls
        self._window_out_of_range = (
            out_of_range if self._window_out_of_range is None else self._window_out_of_range + out_of_range
        )
        if self.writer is not None and self.write_events:
            self.writer.write_events_batch(self._events_of(chunk))

    def _events_of(self, chunk: "StagedSteps") -> list[RoutingEvent]:
        """One RoutingEvent per recorded (step, mode, layer) of a chunk, in that order."""
        recorder = self.recorder
        counts = chunk.counts
        counts.flags.writeable = False
        events = []
        for step_index, mode_index, position in np.argwhere(chunk.calls > 0).tolist():
            width = recorder.n_experts[position]
            row = counts[step_index, mode_index, position, :width]
            events.append(
                RoutingEvent.trusted(
                    timestamp=chunk.timestamps[step_index], run_id=self.run_id,
                    step=chunk.steps[step_index], mode=MODES[mode_index],
                    layer_id=recorder.layer_ids[position], n_experts=width,
                    top_k=min(recorder.top_k[position], width), expert_token_counts=row,
                    active_experts=tuple(np.flatnonzero(row).tolist()), token_count=int(row.sum()),
                    router_prob_sums=None, loss=None, aux_loss=None,
                )
            )
        return events

    # -- model attachment --------------------------------------------------------
    def attach(self, model: "torch.nn.Module", **options: Any):
        """Find the MoE layers of ``model`` and record their dispatch with forward hooks.

        See :func:`chronomoe.capture.attach` for ``options`` (custom extractors,
        module filters). Returns the attachment (its ``layers`` say what was found).
        """
        from .capture.adapters import attach

        if self._attachment is not None:
            self.detach()
        self._attachment = attach(model, self, **options)
        return self._attachment

    def detach(self) -> None:
        """Remove the hooks installed by :meth:`attach`."""
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-window: alert states and streaks, the partial window.

        Plain Python values, plus torch tensors for the recorder's staged
        counts, so ``torch.load(..., weights_only=True)`` reads a checkpoint
        holding it (numpy arrays would need unpickling numpy's globals).
        """
        recorder_state = None
        if self.recorder is not None:
            import torch

            recorder_state = {
                key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for key, value in self.recorder.state_dict().items()
            }
        return {
            "version": STATE_DICT_VERSION,
            "run_id": self.run_id,
            "rules": self.rules.model_dump(),
            "banks": {mode: bank.state_dict() for mode, bank in self.banks.items()},
            "stop_reason": self.stop_reason,
            "window": None if self._window is None else self._window.tolist(),
            "window_calls": None if self._window_calls is None else self._window_calls.tolist(),
            "window_out_of_range": None if self._window_out_of_range is None else self._window_out_of_range.tolist(),
            "dropped_records": self.dropped_records,
            "last_snapshot_step": dict(self._last_snapshot_step),
            "recorder": recorder_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (configure/attach the same layers first when recording)."""
        if state.get("version") != STATE_DICT_VERSION:
            raise InvalidInputError("state.version", state.get("version"), f"expected {STATE_DICT_VERSION}")
        if AlertRules.model_validate(state["rules"]) != self.rules:
            logger.warning("resuming run %s with different alert rules than its checkpoint", self.run_id)
        for mode, bank_state in state["banks"].items():
            self.banks[mode].load_state_dict(bank_state)
        self.stop_reason = state["stop_reason"]
        self._last_snapshot_step.update(state.get("last_snapshot_step", {}))
        self._window = None if state["window"] is None else np.asarray(state["window"], dtype=np.int64)
        self._window_calls = None if state["window_calls"] is None else np.asarray(state["window_calls"], dtype=np.int64)
        out_of_range = state.get("window_out_of_range")
        self._window_out_of_range = None if out_of_range is None else np.asarray(out_of_range, dtype=np.int64)
        # dropped_records reads the checkpoint's total from here on.
        self._earlier_dropped_records = int(state.get("dropped_records", 0)) - (
            0 if self.writer is None else self.writer.dropped_records
        )
        if state["recorder"] is not None:
            recorder_state = state["recorder"]
            if self.recorder is None:
                if self._recorder_layout is None:
                    self._recorder_layout = (recorder_state["layer_ids"], recorder_state["n_experts"], 1)
                self._make_recorder("cpu" if self._attachment is None else self._attachment.device)
            self.recorder.load_state_dict(recorder_state)

    def close(self) -> None:
        """Remove hooks and close files."""
        self.detach()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
