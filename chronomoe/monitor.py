"""Monitor: the one object a training loop uses, a thin conductor over parts that also work alone.

capture (:class:`~chronomoe.capture.CaptureSession`) -> snapshot and alert
machines (:class:`~chronomoe.snapshotter.Snapshotter`) -> run folder
(:class:`~chronomoe.io.TelemetryWriter`) -> bus (:class:`~chronomoe.bus.EventBus`)
-> subscribers (the lens, the controller, your handlers). Two ways to feed it:

* **events or counts you already have**: ``monitor.observe(events_or_counts,
  step, train_loss, val_loss)`` builds, writes and publishes a snapshot;
* **sync-free capture from the model**: ``monitor.attach(model)`` (or
  ``monitor.record(layer_id, indices=...)`` from your own code), then
  ``monitor.step(step)`` at the end of each training step and
  ``monitor.snapshot(step, train_loss, val_loss)`` at your evaluation cadence.

Either way a snapshot is written (with its transitions) first, then its
transitions are published (layer order) on ``"transition"`` and itself on
``"snapshot"``: it is on disk before any handler runs, and the writer's I/O
errors follow ``io_errors``, not the bus's handler isolation. A handler stops
the run with :meth:`Monitor.request_stop`; the training loop checks
:attr:`Monitor.should_stop`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chronomoe.controller import Actuator, ControlDecision, Controller, NoOpController
from chronomoe.lens import LensStateKeeper

from .alerts import AlertRules, AlertState
from .bus import Connection
from .config import MonitorConfig
from .errors import InvalidInputError
from .events import RoutingEvent
from .io import EVENTS_FILE, SNAPSHOTS_FILE, TelemetryWriter, check_run_id
from .participants import DEFAULT, Default, check_controller, check_lens, participant_state
from .run_recording import RunRecording, run_manifest
from .snapshots import SystemSnapshot
from .snapshotter import Snapshotter
from .topics import monitor_bus
from .windows import events_of_mode, validate_counts_matrix, window_counts

if TYPE_CHECKING:
    import torch

    from .capture import Attachment, CaptureSession
    from .capture.distributed import RankReduction
    from .governance import RouterGovernance

logger = logging.getLogger(__name__)

STATE_DICT_VERSION = 1


class Monitor:
    """Routing telemetry and governance for one run.

    Args:
        run_id: run identifier (the run folder's name when writing; one path component).
        output_dir, model_name, rules: shortcuts for the :class:`~chronomoe.config.MonitorConfig`
            fields of those names.
        config: a :class:`~chronomoe.config.MonitorConfig` (default: the defaults).
        controller: joins the bus (default: a :class:`~chronomoe.controller.NoOpController`;
            ``None``: none); replace it with :meth:`set_controller`.
        lens: a :class:`~chronomoe.lens.ChronoLens` (or any
            :class:`~chronomoe.lens.LensStateKeeper`) kept current from the bus
            (default: an :class:`~chronomoe.lens.IdentityLens`; ``None``: none);
            replace it with :meth:`set_lens`.
        overrides: any other :class:`~chronomoe.config.MonitorConfig` field
            (``n_experts=[8, 8]``, ``io_errors="raise"``, ``distributed={...}``).

    Every argument is validated before anything is created on disk: an
    unknown option or a bad value raises
    :class:`~chronomoe.errors.InvalidInputError` naming it, and so does an
    ``output_dir/run_id`` that already holds a recorded run, unless
    ``on_existing_run`` is ``"resume"`` or ``"new"`` (see
    :mod:`chronomoe.io.run_folder`).

    Attributes:
        run_id: the run's id, stamped on its records (``run_id-N`` when
            ``on_existing_run="new"`` picked a new folder).
        run_dir: the run folder written, or ``None`` without ``output_dir``
            (and on the ranks that do not write, under torch.distributed).
    """

    def __init__(
        self,
        run_id: str = "run",
        output_dir: Any = None,
        model_name: str | None = None,
        rules: AlertRules | None = None,
        *,
        config: MonitorConfig | None = None,
        controller: Controller | Default | None = DEFAULT,
        lens: LensStateKeeper | Default | None = DEFAULT,
        **overrides: Any,
    ) -> None:
        shortcuts = {"output_dir": output_dir, "model_name": model_name, "rules": rules}
        overrides.update({name: value for name, value in shortcuts.items() if value is not None})
        self.config = MonitorConfig.build(config, **overrides)
        if not isinstance(run_id, str) or not run_id:
            raise InvalidInputError("run_id", run_id, "must be a non-empty string")
        if self.config.output_dir is not None:
            check_run_id(run_id)
        check_controller(controller)
        check_lens(lens)

        self.run_id = run_id
        self.rules = self.config.rules
        self.stop_reason: str | None = None
        self.last_snapshot: SystemSnapshot | None = None
        self.capture: CaptureSession | None = None
        self._attachment: Attachment | None = None
        self._earlier_dropped_records = 0  # dropped by the writers of the run before a resume
        self._collective = self._rank_reduction()

        output = self.config.output_dir
        if self._collective is not None:
            output = self._collective.output_dir_of_rank(output, self.config.distributed.write_on_all_ranks)
        rank = 0 if self._collective is None else self._collective.global_rank
        self.recording = None if output is None else RunRecording(run_id, Path(output), self.config, rank)
        self.writer: TelemetryWriter | None = None if self.recording is None else self.recording.writer
        self.run_dir: Path | None = None if self.recording is None else self.recording.run_dir
        self.run_id = run_id if self.recording is None else self.recording.run_id  # on_existing_run="new" renames
        declared = None
        if self.config.n_experts is not None:
            declared = dict(enumerate(self.config.n_experts))
        self.snapshotter = Snapshotter(
            self.run_id, self.config.model_name, self.rules, declared, underuse_ratio=self.config.underuse_ratio
        )

        self.bus = monitor_bus(strict=self.config.strict_handlers)
        # First on "decision": every decision is kept for the run folder before any other handler sees it.
        self._decisions_to_write: list[ControlDecision] = []
        self.bus.subscribe("decision", self._decisions_to_write.append)
        self._governance: RouterGovernance | None = None
        self.controller: Controller | None = None
        self.lens: LensStateKeeper | None = None
        self.controller_connection: Connection | None = None
        self.lens_connection: Connection | None = None
        self.set_controller(NoOpController() if controller is DEFAULT else controller)
        if lens is DEFAULT:
            from chronomoe.lens import IdentityLens

            lens = IdentityLens()
        self.set_lens(lens)

    def _rank_reduction(self) -> RankReduction | None:
        """The cross-rank reduction under torch.distributed, else ``None``."""
        distributed = self.config.distributed
        # torch.distributed can only be initialised once torch is imported; importing it otherwise costs seconds.
        if "torch" not in sys.modules and not distributed.requested:
            return None
        from .capture.distributed import rank_reduction

        return rank_reduction(
            distributed.process_group,
            timeout_s=distributed.collective_timeout,
            expert_ids=distributed.expert_ids,
            count_tokens=distributed.count_tokens,
            on_stop=self._stop,
        )

    def manifest(self) -> dict[str, Any]:
        """The run manifest: run id, model, your training config, rules, the resolved MonitorConfig, versions.

        What ``run_manifest.json`` holds (for a resumed run, the folder's own, with its ``resumes``), and what
        the tracker sinks log as their run config. Without a run folder each call makes a new one
        (``created_at`` is the call's time).
        """
        if self.recording is not None:
            return dict(self.recording.manifest)
        return run_manifest(self.run_id, self.config)

    # -- participants ----------------------------------------------------------------
    def set_controller(self, controller: Controller | None) -> Connection | None:
        """Replace the controller (``None``: none) at any time; the old one is disconnected from the bus first.

        Returns the new controller's connection (``None`` without a controller).
        """
        check_controller(controller)
        if self.controller_connection is not None:
            self.controller_connection.disconnect()
        self.controller = controller
        self.controller_connection = None if controller is None else self.bus.connect(controller)
        if self._governance is not None:
            self._governance.set_controller(controller)
        return self.controller_connection

    def set_lens(self, lens: LensStateKeeper | None) -> Connection | None:
        """Replace the lens (``None``: none) at any time; the old one is disconnected from the bus first."""
        check_lens(lens)
        if self.lens_connection is not None:
            self.lens_connection.disconnect()
        self.lens = lens
        self.lens_connection = None if lens is None else self.bus.connect(lens)
        if self._governance is not None:
            self._governance.set_lens(lens)
        return self.lens_connection

    # -- stopping ------------------------------------------------------------------------
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
        return self.snapshotter.state(layer_id, mode)

    # -- path 1: events or counts in hand --------------------------------------------------
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
        """Snapshot a window given as routing events or as summed counts ``[n_layers, n_experts]``.

        Events of another ``mode`` are written but not counted. Raises
        :class:`~chronomoe.errors.InvalidInputError` (nothing written, no
        machine moved) for bad arguments or layers contradicting earlier ones.
        """
        self.snapshotter.check_call(mode, step, train_loss, val_loss)
        if self.recording is not None:
            self.recording.check_after_recorded(SNAPSHOTS_FILE, step)
        items: np.ndarray | list[Any]
        if isinstance(events_or_counts, np.ndarray):
            items = events_or_counts
        else:
            try:
                items = list(events_or_counts)
            except TypeError:
                raise InvalidInputError(
                    "events_or_counts",
                    events_or_counts,
                    "must be RoutingEvents or a [n_layers, n_experts] counts matrix",
                ) from None
        # An empty list is a window without events (layers up to n_layers are no_data).
        if isinstance(items, list) and (not items or isinstance(items[0], RoutingEvent)):
            stray = next((index for index, item in enumerate(items) if not isinstance(item, RoutingEvent)), None)
            if stray is not None:
                raise InvalidInputError(
                    f"events_or_counts[{stray}]", items[stray], "is not a RoutingEvent, unlike the first"
                )
            window = events_of_mode(items, mode)
            counts, n_experts, layer_ids = window_counts(window, n_layers)
            reported = np.isin(layer_ids, [event.layer_id for event in window])
            self.snapshotter.check_layers(layer_ids[reported], n_experts[reported])
            # Under torch.distributed these are one rank's events; the reduced snapshot is what gets written.
            if self.config.write_events and self._collective is None:
                self._write_events(items)
        else:
            counts, n_experts = validate_counts_matrix(items)
            layer_ids = np.arange(len(counts))
            reported = np.ones(len(counts), dtype=bool)
            self.snapshotter.check_layers(layer_ids, n_experts)
        if self._collective is not None:
            counts, n_experts, layer_ids = self._collective.reduce_window(
                counts, n_experts, reported, step=step, mode=mode
            )
        return self._publish(mode, counts, n_experts, layer_ids, step, train_loss, val_loss)

    def _publish(
        self,
        mode: str,
        counts: np.ndarray,
        n_experts: np.ndarray,
        layer_ids: np.ndarray,
        step: int,
        train_loss: float | None,
        val_loss: float | None,
        out_of_range_expert_ids: int = 0,
    ) -> SystemSnapshot:
        """Snapshot, write, then publish: transitions in layer order, then the snapshot; then write the decisions
        the controller made on them (published on ``"decision"`` during that delivery)."""
        snapshot = self.snapshotter.take(
            mode,
            counts,
            n_experts,
            layer_ids,
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            dropped_records=self.dropped_records,
            out_of_range_expert_ids=out_of_range_expert_ids,
        )
        if self.writer is not None:
            self.writer.write_snapshot(snapshot)
        for transition in snapshot.transitions:
            self.bus.publish("transition", transition)
        self.bus.publish("snapshot", snapshot)
        if mode == "TRAIN":
            self.last_snapshot = snapshot
        self._write_decisions()
        return snapshot

    def _write_decisions(self) -> None:
        decisions, self._decisions_to_write[:] = list(self._decisions_to_write), []
        if decisions and self.writer is not None:
            self.writer.write_decisions(decisions)

    # -- path 2: sync-free capture ---------------------------------------------------------
    def configure_capture(
        self,
        n_experts: Sequence[int],
        layer_ids: Sequence[int] | None = None,
        top_k: int | Sequence[int] = 1,
        device: torch.device | str | None = None,
    ) -> None:
        """Declare the MoE layers to record (``attach`` calls this); the recorder is made on first record."""
        from .capture import CaptureSession, LayerLayout

        if self.capture is not None and self.capture.pending_steps:
            raise InvalidInputError("n_experts", list(n_experts), "cannot change layers in the middle of a window")
        layout = LayerLayout.of(n_experts, layer_ids, top_k)
        reduce_factory = None if self._collective is None else self._collective.staged_reducer
        self.capture = CaptureSession(self.run_id, layout, self.config.capacity, reduce_factory, device)
        self.snapshotter.declare_layers(layout.layers)

    def _capture_session(self) -> CaptureSession:
        """The capture session, made from ``n_experts`` of the config when there is none yet."""
        if self.capture is None:
            if self.config.n_experts is None:
                raise InvalidInputError(
                    "n_experts",
                    None,
                    "unknown: pass Monitor(n_experts=[...]) or call monitor.attach(model) before record()",
                )
            self.configure_capture(self.config.n_experts, top_k=self.config.top_k)
        assert self.capture is not None
        return self.capture

    def record(
        self,
        layer_id: int,
        indices: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        mode: str = "TRAIN",
    ) -> None:
        """Add one forward's dispatch of ``layer_id`` (sync-free); see :meth:`~chronomoe.capture.CaptureSession.record`.

        Expert ids outside ``0..n_experts-1`` are not counted in any layer;
        the next snapshot reports how many in ``out_of_range_expert_ids``.
        """
        self._capture_session().record(layer_id, indices=indices, counts=counts, mode=mode)

    def step(self, step: int) -> None:
        """End of training step ``step``: stage its counts (sync-free unless the staging ring is full)."""
        if self.capture is None:
            return
        if self.recording is not None and self.config.write_events:
            self.recording.check_after_recorded(EVENTS_FILE, step)
        if self._collective is not None:
            self._collective.expect(step, "step")
        self._write_events(self.capture.end_step(step))

    def snapshot(self, step: int, train_loss: float | None = None, val_loss: float | None = None) -> SystemSnapshot:
        """Close the window: drain the recorder, write its events, snapshot TRAIN (and INFER if recorded)."""
        capture = self.capture
        if capture is None or capture.recorder is None:
            raise InvalidInputError("recorder", None, "nothing recorded yet: call record()/attach() and step() first")
        if self._collective is not None:
            self._collective.expect(step, "snapshot")
        self._write_events(capture.drain())
        # After the drain (under torch.distributed it is a collective every rank makes), before the
        # window is taken: a refused call leaves the window for the corrected retry.
        self.snapshotter.check_call("TRAIN", step, train_loss, val_loss)
        if self.recording is not None:
            self.recording.check_after_recorded(SNAPSHOTS_FILE, step)
        infer_recorded = capture.recorded("INFER")
        if infer_recorded:
            self.snapshotter.check_call("INFER", step, None, val_loss)
        window = capture.take_window()
        layout = capture.layout
        n_experts = np.asarray(layout.n_experts, dtype=np.int64)
        layer_ids = np.asarray(layout.layer_ids, dtype=np.int64)
        if infer_recorded:
            self._publish(
                "INFER", window.counts[1], n_experts, layer_ids, step, None, val_loss, int(window.out_of_range[1])
            )
        return self._publish(
            "TRAIN", window.counts[0], n_experts, layer_ids, step, train_loss, val_loss, int(window.out_of_range[0])
        )

    def _write_events(self, events: list[RoutingEvent]) -> None:
        """Write events (drained ones, or a window given to observe()) after the folder's recorded steps."""
        if events and self.recording is not None and self.config.write_events:
            self.recording.check_after_recorded(EVENTS_FILE, min(event.step for event in events))
            self.recording.writer.write_events_batch(events)
            self.recording.events_written(max(event.step for event in events))

    # -- model attachment -------------------------------------------------------------------
    def attach(self, model: torch.nn.Module, **options: Any) -> Attachment:
        """Find the MoE layers of ``model`` and record their dispatch with forward hooks.

        See :func:`chronomoe.capture.attach` for ``options`` (custom extractors,
        module filters). Returns the attachment (its ``layers`` say what was found).
        """
        from .capture import attach
        from .capture.routers import find_routers
        from .governance import RouterGovernance

        self.detach()
        attachment = attach(model, self.record, **options)
        layers = attachment.layers
        try:
            self.configure_capture(
                [layer.n_experts for layer in layers],
                [layer.layer_id for layer in layers],
                [layer.top_k for layer in layers],
                device=attachment.device,
            )
            governance = RouterGovernance(find_routers(model, layers))
            governance.set_lens(self.lens)
            governance.set_controller(self.controller)
        except BaseException:
            attachment.remove()
            raise
        self._attachment, self._governance = attachment, governance
        return attachment

    @property
    def actuator(self) -> Actuator | None:
        """The router bias actuator on the attached model, when the controller acts on it."""
        return None if self._governance is None else self._governance.actuator

    def detach(self) -> None:
        """Remove the hooks, lens hooks and actuator installed by :meth:`attach` (idempotent)."""
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None
        if self._governance is not None:
            self._governance.remove()
            self._governance = None

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-window: alert states and streaks, the partial window.

        Plain Python values, plus torch tensors for the recorder's staged
        counts, so ``torch.load(..., weights_only=True)`` reads a checkpoint
        holding it.
        """
        capture_state = (
            {"window": None, "window_calls": None, "window_out_of_range": None, "recorder": None}
            if self.capture is None
            else self.capture.state_dict()
        )
        return {
            "version": STATE_DICT_VERSION,
            "run_id": self.run_id,
            "rules": self.rules.model_dump(),
            **self.snapshotter.state_dict(),
            "stop_reason": self.stop_reason,
            "dropped_records": self.dropped_records,
            "controller": participant_state(self.controller),
            "written_steps": None if self.recording is None else self.recording.written_steps(self._last_snapshot_step),
            **capture_state,
        }

    @property
    def _last_snapshot_step(self) -> int | None:
        return max((step for step in self.snapshotter.last_step.values() if step is not None), default=None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (configure or attach the same layers first when recording).

        A resumed run folder (``on_existing_run="resume"``) whose last records
        come after the checkpoint's (the attempt that stopped wrote them) has
        those records moved to ``<file>.superseded``, with a WARNING: the
        folder holds each step once, and the steps after the checkpoint are
        recorded again.
        """
        if state.get("version") != STATE_DICT_VERSION:
            raise InvalidInputError("state.version", state.get("version"), f"expected {STATE_DICT_VERSION}")
        if self.recording is not None and state.get("written_steps") is not None:
            self.recording.rewind(state.get("run_id"), state["written_steps"])
        if AlertRules.model_validate(state["rules"]) != self.rules:
            logger.warning("resuming run %s with different alert rules than its checkpoint", self.run_id)
        self.snapshotter.load_state_dict(state)
        self.stop_reason = state["stop_reason"]
        # dropped_records reads the checkpoint's total from here on.
        self._earlier_dropped_records = int(state.get("dropped_records", 0)) - (
            0 if self.writer is None else self.writer.dropped_records
        )
        recorder_state = state.get("recorder")
        if recorder_state is not None and self.capture is None:
            self.configure_capture(recorder_state["n_experts"], recorder_state["layer_ids"])
        if self.capture is not None:
            device = "cpu" if self._attachment is None else self._attachment.device
            self.capture.load_state_dict(state, device)
        controller_state = state.get("controller")
        if controller_state is not None:
            load = getattr(self.controller, "load_state_dict", None)
            if load is None:
                raise InvalidInputError(
                    "state.controller",
                    type(self.controller).__name__,
                    "the checkpoint holds a controller's state; set the same controller before loading it",
                )
            load(controller_state)

    def close(self) -> None:
        """Write what was recorded, remove hooks, write the decisions still held, close files.

        Steps ended after the last snapshot are in no snapshot: their events
        are drained and written (in one process: under torch.distributed the
        drain is a collective, which close() does not make), and a WARNING
        gives their number and range, with the forwards recorded after the
        last ``step()`` (they belong to no step). Call :meth:`snapshot` at the
        last step to have every step in a snapshot.
        """
        if self.capture is not None:
            if self._collective is None:
                self._write_events(self.capture.drain())
            unsnapshotted = self.capture.unsnapshotted_report()
            if unsnapshotted:
                written = self.writer is not None and self._collective is None and self.config.write_events
                logger.warning(
                    "run %s closing: %s%s. Call monitor.snapshot(step) at the last step to have every step in a "
                    "snapshot",
                    self.run_id,
                    unsnapshotted,
                    "; their events are written to routing_events.jsonl" if written else "",
                )
        self.detach()
        self._write_decisions()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
