"""LayerSnapshot and SystemSnapshot: the periodic summary, the regression contract.

A snapshot summarises a *window* (the events since the previous snapshot):
per layer it sums the dispatched tokens per expert, computes every metric of
:mod:`chronomoe.metrics` on the sums, steps the layer's alert machine, and
lists the alerts of the layers that are in an alert state.

* A layer whose window dispatched no token is ``no_data``: its metrics are
  ``None``, its alert machine neither advances nor resets, and it raises no
  alert.
* A ``collapse_confirmed`` layer reports ``COLLAPSE_CONFIRMED`` only (it
  inhibits its ``PRE_COLLAPSE``).
* Alert strings start with ``PRE_COLLAPSE`` or ``COLLAPSE_CONFIRMED`` and
  name the layer and its metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from .aggregates import CrossLayerAggregates, cross_layer_aggregates
from .alerts import AlertBank, AlertRules, AlertState, AlertTransition
from .alerts.history import alert_history_of, load_alert_history
from .errors import InvalidInputError
from .events import CountsArray, FloatArray, Integer, Mode, Record, RoutingEvent, finite_or_none
from .metrics import UNDERUSE_RATIO, LayerMetricsBatch, layer_metrics_batch
from .windows import events_of_mode, validate_counts_matrix, window_counts


class LayerSnapshot(Record):
    """One layer's topology over a snapshot window.

    Metric fields are ``None`` when ``no_data``. Shares are fractions of the
    window's ``token_count``; entropy is in nats. Definitions and ranges are in
    :mod:`chronomoe.metrics`. The fields added after the seed (``max_vio`` to
    ``underused_count``) default to ``None`` so that logs written before them
    still load.
    """

    layer_id: Integer = Field(ge=0)
    n_experts: Integer = Field(ge=1)
    token_count: Integer = Field(ge=0)
    no_data: bool
    expert_token_counts: CountsArray
    utilization_shares: FloatArray
    active_experts: tuple[int, ...]
    entropy: float | None
    n_effective: float | None
    top2_share: float | None
    gini: float | None
    dead_expert_count: Integer = Field(ge=0)
    nearly_dead_count: Integer = Field(ge=0)
    max_vio: float | None = Field(None, description="n_experts * max(share) - 1; None without data or in older logs")
    load_cv: float | None = Field(None, description="population std / mean of the loads; None without data")
    expert_diversity: float | None = Field(None, description="n_effective / n_experts; None without data")
    dead_fraction: float | None = Field(None, description="dead_expert_count / n_experts; None without data")
    underused_count: Integer | None = Field(
        None, ge=0, description="experts with 0 < share < underuse_ratio / n_experts; None in older logs"
    )
    alert_state: AlertState
    pre_streak: Integer = Field(ge=0)
    collapse_streak: Integer = Field(ge=0)
    healthy_streak: Integer = Field(ge=0)

    def metrics(self) -> dict[str, float | int | None]:
        """The scalar metrics, as an :class:`~chronomoe.alerts.AlertTransition` carries them (``None``: no data)."""
        return {
            "n_experts": self.n_experts,
            "token_count": self.token_count,
            "entropy": self.entropy,
            "n_effective": self.n_effective,
            "top2_share": self.top2_share,
            "gini": self.gini,
            "dead_expert_count": self.dead_expert_count,
            "nearly_dead_count": self.nearly_dead_count,
            "max_vio": self.max_vio,
            "load_cv": self.load_cv,
            "expert_diversity": self.expert_diversity,
            "dead_fraction": self.dead_fraction,
            "underused_count": self.underused_count,
        }

    def alert(self) -> str | None:
        """This layer's alert string, or ``None`` when nominal or without data."""
        if self.no_data or self.alert_state is AlertState.NOMINAL:
            return None
        if self.alert_state is AlertState.COLLAPSE_CONFIRMED:
            return (
                f"COLLAPSE_CONFIRMED: layer {self.layer_id} has {self.dead_expert_count}/"
                f"{self.n_experts} dead experts, Top2={self.top2_share:.3f}, "
                f"Neff={self.n_effective:.2f}/{self.n_experts} "
                f"(condition held {self.collapse_streak} consecutive snapshots)"
            )
        return (
            f"PRE_COLLAPSE: layer {self.layer_id} concentrating, "
            f"Neff={self.n_effective:.2f}/{self.n_experts}, Top2={self.top2_share:.3f}, "
            f"dead={self.dead_expert_count} "
            f"(condition held {self.pre_streak} consecutive snapshots)"
        )


class SystemSnapshot(Record):
    """All layers at one evaluation step, with alerts and the transitions made.

    ``dropped_records`` counts the records the run's writer has dropped after
    I/O errors so far (cumulative, carried across resumes by the Monitor's
    ``state_dict``); ``out_of_range_expert_ids`` counts expert ids outside
    their layer's ``0..n_experts-1`` recorded in this window, which no layer
    counts. Both are 0 in a healthy run.
    """

    step: Integer = Field(ge=0)
    timestamp: float = Field(default_factory=time.time)
    mode: Mode = "TRAIN"
    train_loss: float | None = None
    val_loss: float | None = None
    run_id: str = Field(min_length=1)
    model_name: str = ""
    layers: list[LayerSnapshot]
    alerts: list[str]
    transitions: list[AlertTransition] = Field(default_factory=list)
    dropped_records: Integer = Field(0, ge=0)
    out_of_range_expert_ids: Integer = Field(0, ge=0)
    underuse_ratio: float | None = Field(
        None, description="the ratio behind each layer's underused_count; None in logs written before it"
    )
    aggregates: CrossLayerAggregates | None = Field(
        None, description="Neff, Top2 and MaxVio across the layers with data; None when no layer has data"
    )

    @field_validator("train_loss", "val_loss", "timestamp")
    @classmethod
    def _finite(cls, value: float | None, info: Any) -> float | None:
        return finite_or_none(info.field_name, value)

    def layer(self, layer_id: int) -> LayerSnapshot:
        """The snapshot of ``layer_id`` (KeyError if absent)."""
        for layer in self.layers:
            if layer.layer_id == layer_id:
                return layer
        raise KeyError(f"layer_id={layer_id} is not in this snapshot")

    @classmethod
    def from_events(
        cls,
        events: Sequence[RoutingEvent],
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        run_id: str | None = None,
        model_name: str = "",
        n_layers: int | None = None,
        alert_history: dict[Any, Any] | None = None,
        *,
        rules: AlertRules | None = None,
        mode: str = "TRAIN",
        underuse_ratio: float = UNDERUSE_RATIO,
    ) -> SystemSnapshot:
        """Summarise a window of routing events (the seed's factory).

        Args:
            events: the window's events; those of another ``mode`` are ignored.
            step: the snapshot's training step.
            n_layers: layers ``0..n_layers-1`` appear in the snapshot (a layer
                without events is ``no_data``); default: ``max(layer_id) + 1``.
            alert_history: a plain dict, mutated in place, that carries each
                layer's alert state and streaks from one call to the next
                (start with ``{}`` and pass the same dict every time); the
                seed's form ``{layer_id: {"pre_collapse_count": n,
                "collapse_count": m}}`` is read too (see :mod:`chronomoe.alerts.history`).
            rules: alert rules (default: ``specs/default_rules.json``).
            underuse_ratio: fraction of the uniform share below which a live expert is under-used.
            run_id: defaults to the events' run_id.
        """
        window = events_of_mode(events, mode)
        if run_id is None:
            if not window:
                raise InvalidInputError("run_id", None, "is required when the window holds no event")
            run_id = window[0].run_id
        counts, n_experts, layer_ids = window_counts(window, n_layers)
        return cls._from_window(
            counts,
            n_experts,
            layer_ids,
            alert_history,
            rules,
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            run_id=run_id,
            model_name=model_name,
            mode=mode,
            underuse_ratio=underuse_ratio,
        )

    @classmethod
    def from_counts(
        cls,
        counts: np.ndarray | Sequence[Sequence[int]],
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        run_id: str = "run",
        model_name: str = "",
        alert_history: dict[Any, Any] | None = None,
        *,
        n_experts: Sequence[int] | None = None,
        layer_ids: Sequence[int] | None = None,
        rules: AlertRules | None = None,
        mode: str = "TRAIN",
        underuse_ratio: float = UNDERUSE_RATIO,
    ) -> SystemSnapshot:
        """Summarise a window given as summed counts ``[n_layers, n_experts]``.

        ``counts`` may be a matrix or a list of per-layer vectors of different
        lengths; ``n_experts`` gives each row's expert count when the matrix is
        zero-padded. ``layer_ids`` default to ``0..n_layers-1``.
        """
        matrix, widths = validate_counts_matrix(counts, n_experts)
        ids = np.arange(len(matrix)) if layer_ids is None else np.asarray(layer_ids, dtype=np.int64)
        return cls._from_window(
            matrix,
            widths,
            ids,
            alert_history,
            rules,
            step=step,
            train_loss=train_loss,
            val_loss=val_loss,
            run_id=run_id,
            model_name=model_name,
            mode=mode,
            underuse_ratio=underuse_ratio,
        )

    @classmethod
    def _from_window(
        cls,
        counts: np.ndarray,
        n_experts: np.ndarray,
        layer_ids: np.ndarray,
        alert_history: dict[Any, Any] | None,
        rules: AlertRules | None,
        **fields: Any,
    ) -> SystemSnapshot:
        """Step the alert machines that ``alert_history`` holds (new layers start nominal) and write them back."""
        bank = AlertBank(rules)
        if alert_history:
            load_alert_history(bank, alert_history)
        snapshot = build_snapshot(bank, counts, n_experts, layer_ids, **fields)
        if alert_history is not None:
            alert_history.update(alert_history_of(bank))
        return snapshot


def build_snapshot(
    bank: AlertBank,
    counts: np.ndarray,
    n_experts: np.ndarray,
    layer_ids: np.ndarray,
    *,
    step: int,
    run_id: str,
    model_name: str = "",
    mode: str = "TRAIN",
    train_loss: float | None = None,
    val_loss: float | None = None,
    timestamp: float | None = None,
    dropped_records: int = 0,
    out_of_range_expert_ids: int = 0,
    underuse_ratio: float = UNDERUSE_RATIO,
) -> SystemSnapshot:
    """Metrics for a validated window, one step of the layers' alert machines, the snapshot.

    ``counts`` ``[L, E]`` int64 and ``n_experts`` ``[L]`` as returned by
    :func:`~chronomoe.windows.validate_counts_matrix` or
    :func:`~chronomoe.windows.window_counts`; the last three arguments fill
    the snapshot fields of those names.
    """
    timestamp = time.time() if timestamp is None else timestamp
    # Validate the snapshot's own fields before any alert machine moves:
    # a rejected snapshot must not advance persistence.
    header = SystemSnapshot(
        step=step,
        timestamp=timestamp,
        mode=mode,
        train_loss=train_loss,
        val_loss=val_loss,
        run_id=run_id,
        model_name=model_name,
        layers=[],
        alerts=[],
        dropped_records=dropped_records,
        out_of_range_expert_ids=out_of_range_expert_ids,
        underuse_ratio=underuse_ratio,
    )
    batch = layer_metrics_batch(counts, n_experts, underuse_ratio=underuse_ratio)
    rules = bank.rules
    pre = rules.pre_condition(batch.n_effective, batch.n_experts, batch.top2_share)
    collapse = rules.collapse_condition(batch.dead_count, batch.top2_share)
    ids = layer_ids.tolist()
    changes = dict(bank.step(ids, pre.tolist(), collapse.tolist(), batch.no_data.tolist()))

    layers = _layer_snapshots(bank, batch, counts, ids)
    transitions = [
        AlertTransition.trusted(
            run_id=run_id,
            step=step,
            mode=mode,
            layer_id=layer.layer_id,
            source=changes[layer.layer_id].source,
            dest=changes[layer.layer_id].dest,
            trigger=changes[layer.layer_id].trigger,
            pre_streak=layer.pre_streak,
            collapse_streak=layer.collapse_streak,
            healthy_streak=layer.healthy_streak,
            metrics=layer.metrics(),
            timestamp=timestamp,
        )
        for layer in layers
        if layer.layer_id in changes
    ]
    return header.model_copy(
        update={
            "layers": layers,
            "alerts": [alert for alert in (layer.alert() for layer in layers) if alert is not None],
            "transitions": transitions,
            "aggregates": cross_layer_aggregates(batch, layer_ids),
        }
    )


def _layer_snapshots(
    bank: AlertBank, batch: LayerMetricsBatch, counts: np.ndarray, layer_ids: list[int]
) -> list[LayerSnapshot]:
    """Build LayerSnapshots without re-validating values computed here (the hot path)."""
    counts = counts.copy()
    counts.flags.writeable = False
    shares = batch.shares.copy()
    shares.flags.writeable = False
    columns = {
        name: getattr(batch, name).tolist()
        for name in (
            "n_experts",
            "token_count",
            "entropy",
            "n_effective",
            "top2_share",
            "gini",
            "dead_count",
            "nearly_dead_count",
            "max_vio",
            "load_cv",
            "expert_diversity",
            "dead_fraction",
            "underused_count",
            "no_data",
        )
    }
    # Layers whose every expert got tokens (healthy ones: most of them) share
    # one active_experts tuple per width; only the others need their rows'
    # non-zero columns.
    every_expert = {width: tuple(range(width)) for width in set(columns["n_experts"])}
    active = [every_expert[width] for width in columns["n_experts"]]
    partial = np.flatnonzero(np.count_nonzero(counts, axis=1) != batch.n_experts)
    partial_rows, partial_columns = np.nonzero(counts[partial])
    row_starts = np.searchsorted(partial_rows, np.arange(len(partial) + 1)).tolist()
    partial_columns = partial_columns.tolist()
    for index, position in enumerate(partial.tolist()):
        active[position] = tuple(partial_columns[row_starts[index] : row_starts[index + 1]])
    layers = []
    for position, layer_id in enumerate(layer_ids):
        width = columns["n_experts"][position]
        empty = columns["no_data"][position]
        machine = bank[layer_id]
        row = counts[position, :width]
        layers.append(
            LayerSnapshot.trusted(
                layer_id=layer_id,
                n_experts=width,
                token_count=columns["token_count"][position],
                no_data=empty,
                expert_token_counts=row,
                utilization_shares=shares[position, :width],
                active_experts=active[position],
                entropy=None if empty else columns["entropy"][position],
                n_effective=None if empty else columns["n_effective"][position],
                top2_share=None if empty else columns["top2_share"][position],
                gini=None if empty else columns["gini"][position],
                dead_expert_count=columns["dead_count"][position],
                nearly_dead_count=columns["nearly_dead_count"][position],
                max_vio=None if empty else columns["max_vio"][position],
                load_cv=None if empty else columns["load_cv"][position],
                expert_diversity=None if empty else columns["expert_diversity"][position],
                dead_fraction=None if empty else columns["dead_fraction"][position],
                underused_count=columns["underused_count"][position],
                alert_state=machine.alert_state,
                pre_streak=machine.pre_streak,
                collapse_streak=machine.collapse_streak,
                healthy_streak=machine.healthy_streak,
            )
        )
    return layers


def check_immediate_alerts(layers: Iterable[LayerSnapshot], rules: AlertRules | None = None) -> list[str]:
    """Warning and alert strings for the given layers, in their order (a layer's warning before its alert):
    the seed's instant, non-persistent check, for dashboards.

    A snapshot's ``alerts`` need their condition to persist over consecutive
    snapshots (:mod:`chronomoe.alerts`); this check looks at the given layers
    alone, with no history, so a dashboard can flag a layer the moment it
    concentrates:

    * ``WARNING: layer L concentrating (Neff=..., Top2=...)`` for a layer meeting
      the PRE_COLLAPSE condition, ``Neff < neff_ratio * n_experts`` or
      ``Top2 > pre_top2`` (the Top2 clause for layers of more than two experts,
      as in the alert rules; thresholds from ``rules``, by default the seed's
      0.6 and 0.75);
    * ``ALERT: layer L has D dead expert(s) ...`` for a layer with at least one
      dead expert (no token over the window).

    A layer whose window held no token (``no_data``) gives neither: it has no
    metrics to judge.


    ``layers`` are :class:`~chronomoe.snapshots.LayerSnapshot` s (a
    snapshot's ``layers``). Raises :class:`~chronomoe.errors.InvalidInputError`
    naming the position of an item that is not one.
    """
    rules = rules if rules is not None else AlertRules.default()
    messages = []
    for position, layer in enumerate(layers):
        if not isinstance(layer, LayerSnapshot):
            raise InvalidInputError(f"layers[{position}]", layer, "is not a LayerSnapshot")
        if layer.no_data or layer.n_effective is None or layer.top2_share is None:
            continue
        concentrating = rules.pre_condition(
            np.array([layer.n_effective]), np.array([layer.n_experts]), np.array([layer.top2_share])
        )
        if concentrating[0]:
            messages.append(
                f"WARNING: layer {layer.layer_id} concentrating "
                f"(Neff={layer.n_effective:.2f}/{layer.n_experts}, Top2={layer.top2_share:.3f})"
            )
        if layer.dead_expert_count >= 1:
            messages.append(
                f"ALERT: layer {layer.layer_id} has {layer.dead_expert_count}/{layer.n_experts} dead expert(s) "
                f"(no token over the window; Top2={layer.top2_share:.3f})"
            )
    return messages
