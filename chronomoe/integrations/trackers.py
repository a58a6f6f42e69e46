"""What the experiment-tracker sinks (W&B, MLflow, trackio) have in common: one key/value builder, one base class.

Every tracker sink logs the same keys with the same values; only the way a
tracker stores them differs (:mod:`~chronomoe.integrations.wandb`,
:mod:`~chronomoe.integrations.mlflow`, :mod:`~chronomoe.integrations.trackio`).

Keys (``prefix`` defaults to ``chronomoe/``; INFER snapshots and decisions add
``infer/`` after it), at the snapshot's step:

==============================================  =====================================================  =======
key                                             value                                                  default
==============================================  =====================================================  =======
``<prefix><metric>/layer_<id>``                 each metric of ``layer_metrics`` for each layer        on
                                                (``alert_state``: 0 nominal, 1 pre_collapse,
                                                2 collapse_confirmed); a layer without data in the
                                                window logs ``alert_state`` only
``<prefix><metric>/<stat>``                     ``n_effective``, ``top2_share``, ``max_vio`` across    on
                                                layers: ``mean``, ``min``, ``max``, ``p50``, ``p90``,
                                                ``p95``, ``worst_layer`` (the id of the worst layer)
``<prefix>layers/<state>``                      layers in ``pre_collapse``, in ``collapse_confirmed``  on
``<prefix>expert_load/layer_<id>``              histogram of the layer's shares over its experts       on
                                                (:func:`expert_load_histogram`)
``<prefix>expert_share/layer_<id>/expert_<j>``  each expert's share of the layer's tokens              off
``<prefix>decision/<field>/layer_<id>``         a controller decision's ``pressure`` and the largest   off
                                                change it made (``max_abs_change``)
==============================================  =====================================================  =======

At 58 layers x 256 experts (DeepSeek-V3's MoE layers) the defaults log 429
scalar keys and 58 histograms per mode; ``per_expert=True`` adds 14,848
scalar keys (``tests/test_trackers.py`` counts them).

Errors: a sink method that raises (the tracker refused a value, its run was
finished or deleted, its disk is full) raises into the bus, which logs the
error with its traceback, counts it in ``bus.errors`` and goes on with the
other handlers and the training loop; a sink that fails 100 times in a row is
unsubscribed (see :mod:`chronomoe.bus`). Under ``torch.distributed`` every
rank publishes the same snapshots: connect a sink on one rank only.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chronomoe.controller import ControlDecision

from ..alerts import AlertState, AlertTransition
from ..errors import InvalidInputError
from ..snapshots import LayerSnapshot, SystemSnapshot

STATE_LEVELS = {AlertState.NOMINAL: 0, AlertState.PRE_COLLAPSE: 1, AlertState.COLLAPSE_CONFIRMED: 2}
"""The number logged for each alert state."""

MAX_HISTOGRAM_BINS = 512
"""Most bins of one histogram: W&B's limit (``wandb.Histogram``), and trackio's."""

KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")
"""Characters every tracker accepts in a key (MLflow's rule, the strictest of the three)."""

LayerMetricName = Literal[
    "n_effective",
    "top2_share",
    "max_vio",
    "load_cv",
    "expert_diversity",
    "dead_expert_count",
    "dead_fraction",
    "underused_count",
    "nearly_dead_count",
    "entropy",
    "gini",
    "token_count",
    "alert_state",
]
"""The per-layer values a sink can log: the :class:`~chronomoe.snapshots.LayerSnapshot` fields of those names."""

DEFAULT_LAYER_METRICS: tuple[LayerMetricName, ...] = (
    "n_effective",
    "top2_share",
    "max_vio",
    "load_cv",
    "dead_expert_count",
    "underused_count",
    "alert_state",
)
"""What a sink logs per layer by default: the alert rules' inputs, what practitioners compare, the alert state."""

AGGREGATE_STATS = ("mean", "min", "max", "p50", "p90", "p95")
DECISION_FIELDS = ("pressure", "max_abs_change")
CURRENT = "current"
"""``run=CURRENT``: join the tracker's current run, looked up at the sink's first publication (a run that a
training framework's integration starts after the sink is made)."""


class TrackerSinkConfig(BaseModel):
    """What a tracker sink logs (the same for every tracker). Build it with :meth:`build` for named errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str = Field("chronomoe/", description="start of every key; letters, digits and _ - . / : space only")
    layer_metrics: tuple[LayerMetricName, ...] = Field(
        DEFAULT_LAYER_METRICS, description="per-layer values logged at each snapshot, one key per layer each"
    )
    aggregates: bool = Field(
        True, description="log the snapshot's cross-layer aggregates and the number of layers in each alert state"
    )
    per_expert: bool = Field(
        False, description="log every expert's share as its own key (layers x experts keys: opt-in)"
    )
    histogram_every: int | None = Field(
        1,
        ge=1,
        description="log the expert-load histograms at the first and every n-th snapshot of a mode (None: never)",
    )
    alerts: bool = Field(True, description="report alert transitions as the tracker's alerts (MLflow: run tags)")
    decisions: bool = Field(False, description="log the pressure and change of each controller decision per layer")

    @field_validator("prefix")
    @classmethod
    def _key_characters(cls, value: str) -> str:
        if not KEY_PATTERN.match(value):
            raise ValueError("must hold only letters, digits, '_', '-', '.', '/', ':' and spaces")
        return value

    @classmethod
    def build(cls, config: TrackerSinkConfig | None = None, **overrides: Any) -> TrackerSinkConfig:
        """``config`` (default: the defaults) with ``overrides`` applied, validated.

        Raises :class:`~chronomoe.errors.InvalidInputError` naming the first unknown or invalid field and its value.
        """
        if config is not None and not isinstance(config, TrackerSinkConfig):
            raise InvalidInputError("config", type(config).__name__, "must be a TrackerSinkConfig")
        base = {} if config is None else {name: getattr(config, name) for name in config.model_fields_set}
        try:
            return cls.model_validate({**base, **overrides})
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "config"
            reason = first["msg"]
            if first["type"] == "extra_forbidden":
                reason = f"is not an option of a tracker sink; options: {', '.join(cls.model_fields)}"
            raise InvalidInputError(field, first.get("input"), reason) from None


@dataclass(frozen=True)
class TrackerAlert:
    """An alert transition as a tracker alert: ``title`` (under 64 characters), ``text``, ``level``."""

    title: str
    text: str
    level: Literal["INFO", "WARN", "ERROR"]


def mode_prefix(prefix: str, mode: str) -> str:
    """``prefix`` for TRAIN, ``prefix + "infer/"`` for INFER."""
    return prefix if mode == "TRAIN" else f"{prefix}{mode.lower()}/"


def snapshot_scalars(snapshot: SystemSnapshot, config: TrackerSinkConfig) -> dict[str, float]:
    """The scalar key/values of one snapshot (see the module docstring): keys are unique, values finite floats."""
    start = mode_prefix(config.prefix, snapshot.mode)
    values: dict[str, float] = {}
    for layer in snapshot.layers:
        for name in config.layer_metrics:
            value = STATE_LEVELS[layer.alert_state] if name == "alert_state" else getattr(layer, name)
            if value is not None and not (layer.no_data and name != "alert_state"):
                values[f"{start}{name}/layer_{layer.layer_id}"] = float(value)
        if config.per_expert and not layer.no_data:
            for expert, share in enumerate(layer.utilization_shares.tolist()):
                values[f"{start}expert_share/layer_{layer.layer_id}/expert_{expert}"] = share
    if config.aggregates:
        if snapshot.aggregates is not None:
            for metric in ("n_effective", "top2_share", "max_vio"):
                stats = getattr(snapshot.aggregates, metric)
                for stat in AGGREGATE_STATS:
                    values[f"{start}{metric}/{stat}"] = float(getattr(stats, stat))
                values[f"{start}{metric}/worst_layer"] = float(stats.worst_layer_id)
        for state in (AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED):
            values[f"{start}layers/{state.value}"] = float(sum(layer.alert_state is state for layer in snapshot.layers))
    return values


def expert_load_histogram(layer: LayerSnapshot) -> tuple[np.ndarray, np.ndarray]:
    """``(values, edges)`` in ``numpy.histogram``'s form: the layer's shares over its expert ids.

    Bin ``i`` covers expert ids ``edges[i] <= id < edges[i + 1]`` and its value is their share of the layer's
    dispatched tokens (values sum to 1). One bin per expert up to :data:`MAX_HISTOGRAM_BINS` experts; above,
    ``ceil(n_experts / 512)`` adjacent experts per bin. A layer without data has all-zero values.
    """
    shares = np.asarray(layer.utilization_shares, dtype=np.float64)
    width = -(-shares.size // MAX_HISTOGRAM_BINS)  # experts per bin, rounded up
    n_bins = -(-shares.size // width)
    padded = np.zeros(n_bins * width)
    padded[: shares.size] = shares
    edges = np.minimum(np.arange(n_bins + 1) * width, shares.size).astype(np.float64)
    return padded.reshape(n_bins, width).sum(axis=1), edges


def expert_load_histograms(
    snapshot: SystemSnapshot, config: TrackerSinkConfig
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``<prefix>expert_load/layer_<id>`` -> :func:`expert_load_histogram`, for each layer with data."""
    start = mode_prefix(config.prefix, snapshot.mode)
    return {
        f"{start}expert_load/layer_{layer.layer_id}": expert_load_histogram(layer)
        for layer in snapshot.layers
        if not layer.no_data
    }


def decision_scalars(decision: ControlDecision, config: TrackerSinkConfig) -> dict[str, float]:
    """A per-layer decision's ``pressure`` and ``change.max_abs_change``, where present (whole-model ones: none)."""
    if decision.layer_id is None:
        return {}
    start = mode_prefix(config.prefix, decision.mode)
    present = {
        "pressure": decision.pressure,
        "max_abs_change": None if decision.change is None else decision.change.max_abs_change,
    }
    return {
        f"{start}decision/{name}/layer_{decision.layer_id}": float(value)
        for name, value in present.items()
        if value is not None
    }


def transition_text(transition: AlertTransition) -> str:
    """One line: step, layer, the change of state and its trigger, and the metrics behind it."""
    metrics = transition.metrics
    return (
        f"step {transition.step}: layer {transition.layer_id} {transition.source.value} -> "
        f"{transition.dest.value} ({transition.trigger}); Neff={metrics['n_effective']:.2f}/"
        f"{metrics['n_experts']}, Top2={metrics['top2_share']:.3f}, dead={metrics['dead_expert_count']}"
    )


def transition_alert(transition: AlertTransition) -> TrackerAlert:
    """ERROR when a layer becomes collapse_confirmed, WARN when it rises to pre_collapse, INFO when it steps down."""
    if transition.dest is AlertState.COLLAPSE_CONFIRMED:
        level: Literal["INFO", "WARN", "ERROR"] = "ERROR"
    elif STATE_LEVELS[transition.dest] > STATE_LEVELS[transition.source]:
        level = "WARN"
    else:
        level = "INFO"
    mode = "" if transition.mode == "TRAIN" else f" {transition.mode}"
    title = f"ChronoMoE{mode} layer {transition.layer_id}: {transition.dest.value}"
    return TrackerAlert(title=title, text=transition_text(transition), level=level)


class TrackerSink(ABC):
    """Turns the bus's publications into tracker calls; a subclass says how its tracker stores them.

    Join it to a monitor's bus with ``monitor.bus.connect(sink)`` (it subscribes :meth:`on_snapshot`,
    :meth:`on_transition` and :meth:`on_decision`; the returned connection's ``disconnect()`` undoes it), and
    :meth:`close` it once disconnected (also as a context manager). Each publication becomes tracker calls
    before the method returns, in the bus's order. A closed sink refuses publications with
    :class:`~chronomoe.errors.InvalidInputError`.
    """

    def __init__(self, config: TrackerSinkConfig | None, overrides: Mapping[str, Any]) -> None:
        self.config = TrackerSinkConfig.build(config, **overrides)
        self.closed = False
        self._snapshots_seen: dict[str, int] = {}

    def _take_run_arguments(
        self,
        run: Any,
        step_metric: str | None,
        run_config: Mapping[str, Any] | None,
        init_options: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Check and keep the arguments that W&B and trackio sinks share (``step_metric``, ``run_config``, which
        run is the sink's own); return the init options of a run the sink starts, with ``run_config`` added to
        their ``config`` under ``"chronomoe"``. Raises :class:`~chronomoe.errors.InvalidInputError` naming the
        argument."""
        if step_metric is not None and (not isinstance(step_metric, str) or not step_metric):
            raise InvalidInputError("step_metric", step_metric, "must be a non-empty string or None")
        if run is not None and init_options is not None:
            raise InvalidInputError(
                "init_options", dict(init_options), "only apply to a run the sink starts (run=None)"
            )
        self.step_metric = step_metric
        self.run_config = dict(run_config or {})
        self.owns_run = run is None
        options = dict(init_options or {})
        if self.run_config:
            options["config"] = {**dict(options.get("config") or {}), "chronomoe": self.run_config}
        return options

    def on_snapshot(self, snapshot: SystemSnapshot) -> None:
        """Log the snapshot's scalars, and its histograms when due, at ``snapshot.step``."""
        self._check_open()
        seen = self._snapshots_seen[snapshot.mode] = self._snapshots_seen.get(snapshot.mode, 0) + 1
        every = self.config.histogram_every
        histograms = {} if every is None or (seen - 1) % every else expert_load_histograms(snapshot, self.config)
        self._log(snapshot.step, snapshot.mode, snapshot_scalars(snapshot, self.config), histograms)

    def on_transition(self, transition: AlertTransition) -> None:
        """Report the transition as the tracker's alert (when ``alerts``)."""
        self._check_open()
        if self.config.alerts:
            self._alert(transition, transition_alert(transition))

    def on_decision(self, decision: ControlDecision) -> None:
        """Log the decision's per-layer values at ``decision.step`` (when ``decisions``)."""
        self._check_open()
        if self.config.decisions:
            values = decision_scalars(decision, self.config)
            if values:
                self._log(decision.step, decision.mode, values, {})

    def close(self) -> None:
        """End what the sink started (a run it created is finished; a joined run is left open). Idempotent."""
        if not self.closed:
            self.closed = True
            self._finish()

    def __enter__(self) -> TrackerSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidInputError(
                type(self).__name__, "closed", "received a publication after close(): disconnect it first"
            )

    @abstractmethod
    def _log(
        self, step: int, mode: str, scalars: dict[str, float], histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Store ``scalars`` and ``histograms`` (``(values, edges)``) at training step ``step``."""

    @abstractmethod
    def _alert(self, transition: AlertTransition, alert: TrackerAlert) -> None:
        """Report one alert transition."""

    @abstractmethod
    def _finish(self) -> None:
        """End what the sink started."""
