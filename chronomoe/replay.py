"""Replay a recorded run's routing events through the alert logic, with other rules or windows.

Topology is *regressible*: the events in ``routing_events.jsonl`` are the
ground truth, and snapshots and alerts are a function of them, the rules and
the snapshot windows. :func:`replay_run` recomputes them with the same code
the :class:`~chronomoe.monitor.Monitor` runs (:func:`~chronomoe.windows.window_counts`,
:func:`~chronomoe.snapshots.build_snapshot`, :class:`~chronomoe.alerts.AlertBank`).

Windows, per mode (TRAIN and INFER have separate alert machines):

* **recorded** (default): one window per recorded snapshot; its events are
  those with ``previous snapshot step < step <= snapshot step``. Each
  replayed snapshot keeps the recorded one's step, timestamp, losses and
  layers, so replaying with the recorded rules reproduces the recorded
  snapshots and transitions exactly. Events after the last recorded snapshot
  were never snapshotted and are not replayed (they are counted).
* **every N steps** (``window=N``): windows ``((k-1)N, kN]`` snapshotted at
  step ``kN``; the last, partial window at the last event's step; windows
  without events are skipped. Layers are all those seen so far in the mode.

Memory is flat in the log's length: events are streamed and only the current
window of each mode is held. Events of one mode must come in non-decreasing
window order (as every ChronoMoE writer produces them).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .alerts import AlertBank, AlertRules, AlertState, AlertTransition
from .errors import CorruptRecordError, InvalidInputError
from .events import MODES, RoutingEvent
from .io import MANIFEST_FILE, load_manifest
from .io.run_reader import open_run
from .io.run_reader_base import RunReader
from .metrics import UNDERUSE_RATIO
from .snapshots import SystemSnapshot, build_snapshot
from .windows import window_counts

PROGRESS_EVERY = 1024
"""Events between two calls of the ``progress`` callback."""


def require_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir`` as a Path; :class:`~chronomoe.errors.InvalidInputError` when it is not a folder."""
    path = Path(run_dir)
    if not path.is_dir():
        raise InvalidInputError("RUN_DIR", str(path), "is not a folder")
    return path


def recorded_rules(run_dir: str | os.PathLike[str]) -> AlertRules | None:
    """The alert rules the run was recorded with (``run_manifest.json``'s ``rules``), if stored."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    rules = load_manifest(path).get("rules")
    if rules is None:
        return None
    try:
        return AlertRules.model_validate(rules)
    except ValueError as error:
        raise InvalidInputError(f"{path}:rules", rules, str(error).splitlines()[0]) from None


def iter_snapshots(
    run_dir: str | os.PathLike[str],
    mode: str | None = None,
    on_corrupt: Callable[[CorruptRecordError], None] | None = None,
) -> Iterator[SystemSnapshot]:
    """Stream the recorded snapshots (of ``mode`` only, when given), whatever the run's storage.

    A corrupt record raises :class:`~chronomoe.errors.CorruptRecordError`, or
    (JSONL) is handed to ``on_corrupt`` and skipped (see
    :meth:`~chronomoe.io.run_reader.RunReader.snapshots`). Raises
    :class:`~chronomoe.errors.InvalidInputError` when the run has no snapshots.
    """
    run = open_run(run_dir)
    run.require("snapshots")
    return run.snapshots(mode, on_corrupt=on_corrupt)


Emit = Callable[[SystemSnapshot], None]
"""Receives each replayed snapshot, in the order built."""


@dataclass
class ReplayResult:
    """What a replay did and how it compares with the recording.

    ``changed_snapshots`` and ``mismatched_snapshots`` are counted in
    recorded-window mode only: snapshots whose layers' alert states differ
    from the recorded ones, and snapshots whose metrics differ (which means
    the event log does not hold what the snapshots were built from).
    """

    rules: AlertRules
    window: int | None
    events: int = 0
    snapshots: int = 0
    unreplayed_events: int = 0
    changed_snapshots: int = 0
    mismatched_snapshots: int = 0
    replayed_transitions: list[AlertTransition] = field(default_factory=list)
    recorded_transitions: list[AlertTransition] = field(default_factory=list)


def replay_run(
    run_dir: str | os.PathLike[str],
    rules: AlertRules | None = None,
    window: int | None = None,
    on_snapshot: Callable[[SystemSnapshot], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Rebuild a run's snapshots and transitions from its routing events.

    Args:
        run_dir: the run folder (``routing_events.jsonl``, ``snapshots.jsonl``, ...).
        rules: alert rules; default: the recorded ones (the manifest's), else
            ``specs/default_rules.json``.
        window: snapshot every ``window`` steps instead of at the recorded
            snapshots (see the module docstring).
        on_snapshot: called with each replayed snapshot, in the order built.
        progress: called with the number of events consumed since its last call.

    Raises :class:`~chronomoe.errors.InvalidInputError` for a missing folder or
    file, a log without events, or events out of window order, and
    :class:`~chronomoe.errors.CorruptRecordError` for a corrupt line.
    """
    run_dir = require_run_dir(run_dir)
    run = open_run(run_dir)
    run.require("routing_events", " (the run was recorded without events?)")
    if window is not None and window < 1:
        raise InvalidInputError("window", window, "must be a positive number of steps")
    if rules is None:
        rules = recorded_rules(run_dir) or AlertRules.default()
    events = run.events()
    first_event = next(events, None)
    if first_event is None:
        raise InvalidInputError("RUN_DIR", str(run_dir), f"holds no routing events ({run.describe('routing_events')})")
    result = ReplayResult(rules=rules, window=window)
    emit = _collector(result, on_snapshot)
    if window is None:
        replayer: _RecordedWindows | _FixedWindows = _RecordedWindows(run, rules, emit, result)
    else:
        replayer = _FixedWindows(window, rules, emit, _model_name(run_dir))

    since_progress = 0
    for event in itertools.chain([first_event], events):
        replayer.add(event)
        result.events += 1
        since_progress += 1
        if progress is not None and since_progress == PROGRESS_EVERY:
            progress(since_progress)
            since_progress = 0
    if progress is not None and since_progress:
        progress(since_progress)
    replayer.finish()

    if run.has("alerts"):
        result.recorded_transitions = list(run.transitions())
    return result


def _collector(result: ReplayResult, on_snapshot: Emit | None) -> Emit:
    def emit(snapshot: SystemSnapshot) -> None:
        result.snapshots += 1
        result.replayed_transitions.extend(snapshot.transitions)
        if on_snapshot is not None:
            on_snapshot(snapshot)

    return emit


def _model_name(run_dir: Path) -> str:
    manifest = run_dir / MANIFEST_FILE
    return str(load_manifest(manifest).get("model_name", "")) if manifest.is_file() else ""


def window_snapshot(
    bank: AlertBank, events: list[RoutingEvent], layers: dict[int, int], **fields: Any
) -> SystemSnapshot:
    """Snapshot one window of one mode with the layers ``{layer_id: n_experts}``.

    A listed layer without events in the window is ``no_data`` with the
    listed expert count; every event's layer must be listed. ``fields`` go to
    :func:`~chronomoe.snapshots.build_snapshot` (``step``, ``run_id``, ...).
    """
    layer_ids = np.array(sorted(layers), dtype=np.int64)
    unlisted = {event.layer_id for event in events} - set(layers)
    if unlisted:
        raise InvalidInputError(
            "routing_events.layer_id",
            min(unlisted),
            f"has events in the window ending at step {fields['step']} but is not a layer of that snapshot",
        )
    counts, event_widths, _ = window_counts(events, int(layer_ids.max()) + 1)
    has_events = np.zeros(len(counts), dtype=bool)
    has_events[[event.layer_id for event in events]] = True
    listed_widths = np.array([layers[layer_id] for layer_id in layer_ids.tolist()], dtype=np.int64)
    n_experts = np.where(has_events[layer_ids], event_widths[layer_ids], listed_widths)
    rows = counts[layer_ids]
    width = int(n_experts.max())
    if width > rows.shape[1]:
        rows = np.pad(rows, ((0, 0), (0, width - rows.shape[1])))
    return build_snapshot(bank, rows, n_experts, layer_ids, **fields)


def _out_of_order(event: RoutingEvent, closed_step: int) -> InvalidInputError:
    return InvalidInputError(
        "routing_events.step",
        event.step,
        f"({event.mode}, layer {event.layer_id}) comes after the window ending at step {closed_step} was closed; "
        "replay needs each mode's events in step order",
    )


class _RecordedWindows:
    """Windows ending at the recorded snapshots' steps; each replayed snapshot is compared with its recording."""

    def __init__(self, run: RunReader, rules: AlertRules, emit: Emit, result: ReplayResult) -> None:
        self.emit = emit
        self.result = result
        self.banks: dict[str, AlertBank] = {mode: AlertBank(rules) for mode in MODES}
        run.require("snapshots")
        self.pending: dict[str, Iterator[SystemSnapshot]] = {mode: run.snapshots(mode) for mode in MODES}
        self.next_snapshot: dict[str, SystemSnapshot | None] = {mode: next(self.pending[mode], None) for mode in MODES}
        self.windows: dict[str, list[RoutingEvent]] = {mode: [] for mode in MODES}
        self.closed_step: dict[str, int | None] = dict.fromkeys(MODES)

    def add(self, event: RoutingEvent) -> None:
        mode = event.mode
        closed = self.closed_step[mode]
        if closed is not None and event.step <= closed:
            raise _out_of_order(event, closed)
        while (upcoming := self.next_snapshot[mode]) is not None and event.step > upcoming.step:
            self._close(mode, upcoming)
        if self.next_snapshot[mode] is None:
            self.result.unreplayed_events += 1
        else:
            self.windows[mode].append(event)

    def finish(self) -> None:
        for mode in MODES:
            while (upcoming := self.next_snapshot[mode]) is not None:
                self._close(mode, upcoming)

    def _close(self, mode: str, recorded: SystemSnapshot) -> None:
        replayed = window_snapshot(
            self.banks[mode],
            self.windows[mode],
            {layer.layer_id: layer.n_experts for layer in recorded.layers},
            step=recorded.step,
            run_id=recorded.run_id,
            model_name=recorded.model_name,
            mode=mode,
            train_loss=recorded.train_loss,
            val_loss=recorded.val_loss,
            timestamp=recorded.timestamp,
            underuse_ratio=recorded.underuse_ratio or UNDERUSE_RATIO,
        )
        if [layer.metrics() for layer in replayed.layers] != [layer.metrics() for layer in recorded.layers]:
            self.result.mismatched_snapshots += 1
        if [layer.alert_state for layer in replayed.layers] != [layer.alert_state for layer in recorded.layers]:
            self.result.changed_snapshots += 1
        self.emit(replayed)
        self.windows[mode] = []
        self.closed_step[mode] = recorded.step
        self.next_snapshot[mode] = next(self.pending[mode], None)


class _FixedWindows:
    """Windows ``((k-1)N, kN]``; the last partial window ends at the last event's step."""

    def __init__(self, window: int, rules: AlertRules, emit: Emit, model_name: str) -> None:
        self.window = window
        self.emit = emit
        self.model_name = model_name
        self.banks: dict[str, AlertBank] = {mode: AlertBank(rules) for mode in MODES}
        self.windows: dict[str, list[RoutingEvent]] = {mode: [] for mode in MODES}
        self.boundary: dict[str, int | None] = dict.fromkeys(MODES)
        self.layers: dict[str, dict[int, int]] = {mode: {} for mode in MODES}

    def add(self, event: RoutingEvent) -> None:
        mode = event.mode
        boundary = math.ceil(event.step / self.window) * self.window
        current = self.boundary[mode]
        if current is not None and boundary < current:
            raise _out_of_order(event, boundary)
        if current is not None and boundary > current:
            self._close(mode, current)
        self.boundary[mode] = boundary
        self.windows[mode].append(event)

    def finish(self) -> None:
        for mode in MODES:
            if self.windows[mode]:
                self._close(mode, max(event.step for event in self.windows[mode]))

    def _close(self, mode: str, step: int) -> None:
        events = self.windows[mode]
        layers = self.layers[mode]
        layers.update({event.layer_id: event.n_experts for event in events})
        self.emit(
            window_snapshot(
                self.banks[mode],
                events,
                {layer_id: layers.get(layer_id, 1) for layer_id in range(max(layers) + 1)},
                step=step,
                run_id=events[0].run_id,
                model_name=self.model_name,
                mode=mode,
                timestamp=max(event.timestamp for event in events),
            )
        )
        self.windows[mode] = []


# -- comparing transitions ----------------------------------------------------------
@dataclass(frozen=True)
class LayerChange:
    """A layer whose transitions differ between the recording and the replay."""

    mode: str
    layer_id: int
    recorded: tuple[AlertTransition, ...]
    replayed: tuple[AlertTransition, ...]

    @property
    def recorded_final(self) -> AlertState:
        return self.recorded[-1].dest if self.recorded else AlertState.NOMINAL

    @property
    def replayed_final(self) -> AlertState:
        return self.replayed[-1].dest if self.replayed else AlertState.NOMINAL


def changed_layers(recorded: list[AlertTransition], replayed: list[AlertTransition]) -> list[LayerChange]:
    """Layers (by mode, then id) whose sequence of ``(step, source, dest)`` transitions differs."""

    def by_layer(transitions: list[AlertTransition]) -> dict[tuple[str, int], tuple[AlertTransition, ...]]:
        grouped: dict[tuple[str, int], list[AlertTransition]] = {}
        for transition in transitions:
            grouped.setdefault((transition.mode, transition.layer_id), []).append(transition)
        return {key: tuple(sorted(group, key=lambda t: t.step)) for key, group in grouped.items()}

    def signature(transitions: tuple[AlertTransition, ...]) -> list[tuple[int, AlertState, AlertState]]:
        return [(t.step, t.source, t.dest) for t in transitions]

    recorded_by_layer, replayed_by_layer = by_layer(recorded), by_layer(replayed)
    changes = []
    for key in sorted(set(recorded_by_layer) | set(replayed_by_layer), key=lambda k: (MODES.index(k[0]), k[1])):
        before, after = recorded_by_layer.get(key, ()), replayed_by_layer.get(key, ())
        if signature(before) != signature(after):
            changes.append(LayerChange(key[0], key[1], before, after))
    return changes


def format_transitions(transitions: tuple[AlertTransition, ...]) -> str:
    """``"30 nominal->pre_collapse, 70 pre_collapse->collapse_confirmed"`` (``"none"`` when empty)."""
    if not transitions:
        return "none"
    return ", ".join(f"{t.step} {t.source.value}->{t.dest.value}" for t in transitions)
