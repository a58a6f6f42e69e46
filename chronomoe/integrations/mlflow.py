"""MLflow sink: the tracker keys of :mod:`~chronomoe.integrations.trackers` in an MLflow run.

Usage (a run of its own; MLflow 3's default store is ``sqlite:///mlflow.db``)::

    sink = MLflowSink(tracking_uri="sqlite:///mlflow.db", experiment_name="moe", run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        train()
    sink.close()

or inside the run that transformers' ``MLflowCallback`` (``report_to="mlflow"``) starts when training begins
(``run=CURRENT``: ``mlflow.active_run()`` at the first publication), or any run by its id (Lightning's
``MLFlowLogger``: ``run=logger.run_id``).

* Scalars go through ``MlflowClient.log_batch`` at ``step=snapshot.step``
  (in batches of at most 1,000 metrics, MLflow's limit). MLflow orders
  metric points by step and accepts any step, and transformers and
  Lightning log theirs with ``step=global_step`` too, so joining a run never
  disturbs its step axis.
* MLflow has no histogram type: each snapshot's expert-load histograms are
  one JSON artifact, ``<prefix>expert_load/step_<step, 9 digits>.json``
  (INFER: ``<prefix>infer/expert_load/...``), holding ``{"step", "mode",
  "histograms": {key: {"bins": edges, "values": values}}}`` with the keys
  and values the W&B and trackio sinks log. ``histogram_every`` thins them.
* MLflow has no alerts: a transition sets the run tags
  ``<prefix>alert_state/layer_<id>`` (the layer's new state),
  ``<prefix>alert_state`` (the most severe state of any layer now) and
  ``<prefix>last_alert`` (level, title and text), so runs can be searched by
  them (``tags."chronomoe/alert_state" = 'collapse_confirmed'``).
* ``run_config`` becomes params ``chronomoe.<path>`` (nested keys joined with
  ``.``, lists as JSON, characters MLflow refuses in a key replaced by ``_``)
  and the artifact ``<prefix>run_manifest.json``. MLflow params cannot change:
  a param the run already holds with another value (a resumed run) is kept,
  with a warning; the artifact is rewritten.
* A run the sink created is terminated by :meth:`close`; a joined run is left open.

Needs ``pip install 'chronomoe[mlflow]'`` (mlflow-skinny with SQLAlchemy and
Alembic, enough for a SQLite store).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
import orjson
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ..alerts import AlertState, AlertTransition
from ..errors import InvalidInputError
from .trackers import CURRENT, STATE_LEVELS, TrackerAlert, TrackerSink, TrackerSinkConfig, mode_prefix

logger = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit on the metrics of one ``log_batch`` call."""

MAX_PARAMS_PER_BATCH = 100
"""MLflow's limit on the params (and tags) of one ``log_batch`` call."""

_NOT_IN_KEY = re.compile(r"[^/\w.\- :]")


class MLflowSink(TrackerSink):
    """Logs a monitor's snapshots, transitions and decisions to an MLflow run.

    Args:
        run: ``None`` creates a run in ``experiment_name``; a run id joins that run;
            :data:`~chronomoe.integrations.trackers.CURRENT` joins ``mlflow.active_run()`` at the first publication.
        tracking_uri: the tracking store (default: MLflow's, ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
        experiment_name: where a run of the sink's own is created (the experiment is created when missing).
        artifact_location: artifact root of an experiment the sink creates (default: MLflow's).
        run_name: name of a run of the sink's own.
        run_config: logged as params and an artifact (pass ``monitor.manifest()``; see the module docstring).
        config: what to log (:class:`~chronomoe.integrations.trackers.TrackerSinkConfig`); ``overrides`` replace
            its fields by name.

    Raises :class:`~chronomoe.errors.InvalidInputError` for a bad argument, before any run is created.
    """

    def __init__(
        self,
        *,
        run: str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str = "chronomoe",
        artifact_location: str | None = None,
        run_name: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        config: TrackerSinkConfig | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(config, overrides)
        if run is not None and (not isinstance(run, str) or not run):
            raise InvalidInputError("run", run, f"must be None, an MLflow run id or {CURRENT!r}")
        if not isinstance(experiment_name, str) or not experiment_name:
            raise InvalidInputError("experiment_name", experiment_name, "must be a non-empty string")
        self.client = MlflowClient(tracking_uri)
        self.run_config = dict(run_config or {})
        self.owns_run = run is None
        self._states: dict[tuple[str, int], AlertState] = {}
        self._run_id: str | None = None
        if run is None:
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is None:
                experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifact_location)
            else:
                experiment_id = experiment.experiment_id
            self._join(self.client.create_run(experiment_id, run_name=run_name).info.run_id)
        elif run != CURRENT:
            self._join(run)

    @property
    def run_id(self) -> str | None:
        """The id of the run logged to (``None`` until a :data:`CURRENT` run is looked up)."""
        return self._run_id

    def _join(self, run_id: str) -> None:
        if self.run_config:
            held = self.client.get_run(run_id).data.params
            params = config_params({"chronomoe": self.run_config})
            changed = sorted(key for key, value in params.items() if key in held and held[key] != value)
            if changed:
                logger.warning("MLflow run %s keeps its params %s: MLflow params cannot change", run_id, changed)
            new = [Param(key, value) for key, value in params.items() if key not in held]
            for start in range(0, len(new), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=new[start : start + MAX_PARAMS_PER_BATCH])
            self.client.log_dict(run_id, {"chronomoe": self.run_config}, f"{self.config.prefix}run_manifest.json")
        self._run_id = run_id

    def _current_run_id(self) -> str:
        if self._run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise InvalidInputError("run", CURRENT, "no MLflow run is active (mlflow.active_run() is None)")
            run_id: str = active.info.run_id
            self._join(run_id)
            return run_id
        return self._run_id

    def _log(
        self, step: int, mode: str, scalars: dict[str, float], histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        run_id = self._current_run_id()
        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH], synchronous=True)
        if histograms:
            document = {
                "step": step,
                "mode": mode,
                "histograms": {
                    key: {"bins": edges.tolist(), "values": values.tolist()}
                    for key, (values, edges) in histograms.items()
                },
            }
            artifact = f"{mode_prefix(self.config.prefix, mode)}expert_load/step_{step:09d}.json"
            self.client.log_dict(run_id, document, artifact)

    def _alert(self, transition: AlertTransition, alert: TrackerAlert) -> None:
        self._states[(transition.mode, transition.layer_id)] = transition.dest
        start = mode_prefix(self.config.prefix, transition.mode)
        worst = max(
            (state for (mode, _), state in self._states.items() if mode == transition.mode),
            key=STATE_LEVELS.__getitem__,
        )
        tags = {
            f"{start}alert_state/layer_{transition.layer_id}": transition.dest.value,
            f"{start}alert_state": worst.value,
            f"{start}last_alert": f"{alert.level}: {alert.title}: {alert.text}",
        }
        self.client.log_batch(self._current_run_id(), tags=[RunTag(key, value) for key, value in tags.items()])

    def _finish(self) -> None:
        if self.owns_run and self._run_id is not None:
            self.client.set_terminated(self._run_id)


def config_params(config: Mapping[str, Any], parent: str = "") -> dict[str, str]:
    """Flatten nested mappings into MLflow params: ``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``.

    Lists, ``None`` and booleans are written as JSON; key characters MLflow refuses become ``_``.
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        name = _NOT_IN_KEY.sub("_", f"{parent}{key}")
        if isinstance(value, Mapping) and value:
            params.update(config_params(value, f"{name}."))
        elif isinstance(value, str):
            params[name] = value
        else:
            params[name] = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
    return params
