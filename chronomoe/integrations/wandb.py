"""Weights & Biases sink: the tracker keys of :mod:`~chronomoe.integrations.trackers` in a W&B run.

Usage (a run of its own)::

    sink = WandbSink(init_options={"project": "moe", "name": "run1"}, run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        train()
    sink.close()

or inside the run that transformers' ``WandbCallback`` (``report_to="wandb"``) starts when training begins::

    sink = WandbSink(run=CURRENT, step_metric=TRANSFORMERS_STEP_METRIC, run_config=monitor.manifest())

* Scalars go through ``run.log``; each layer's expert-load histogram is a
  ``wandb.Histogram`` (at most 512 bins); alert transitions are ``run.alert``
  calls (ERROR, WARN, INFO; W&B itself holds back an alert whose title it
  sent within the last minute: each layer and state has its own title); the run
  config gets ``{"chronomoe": run_config}``.
* **Step axis.** W&B requires increasing steps and drops a value logged at a
  step below the run's current one (with a warning). With ``step_metric=None``
  the sink logs with ``step=snapshot.step``: right for a run of its own, or
  one whose owner logs with ``step=`` the same training step. transformers'
  and Lightning's integrations log *without* ``step=`` and key their metrics
  to ``train/global_step`` and ``trainer/global_step``: give that name as
  ``step_metric`` and the sink logs without ``step=``, adds the training step
  under that key and defines it as the x-axis of its keys, so it never moves
  the owner's step axis.
* A run the sink started is finished by :meth:`close`; a joined run is left open.

Offline (no network, no key): ``init_options={"mode": "offline", "dir": ...}``.
Needs ``pip install 'chronomoe[wandb]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import wandb

from ..alerts import AlertTransition
from ..errors import InvalidInputError
from .trackers import CURRENT, TrackerAlert, TrackerSink, TrackerSinkConfig

TRANSFORMERS_STEP_METRIC = "train/global_step"
"""The step key of transformers' ``WandbCallback`` (and of its ``TrackioCallback``)."""

LIGHTNING_STEP_METRIC = "trainer/global_step"
"""The step key of Lightning's ``WandbLogger``."""


class WandbSink(TrackerSink):
    """Logs a monitor's snapshots, transitions and decisions to a W&B run.

    Args:
        run: ``None`` starts a run with ``wandb.init(**init_options)``; a ``wandb`` run object joins it;
            :data:`~chronomoe.integrations.trackers.CURRENT` joins ``wandb.run`` at the first publication.
        step_metric: the owner's step key when joining a run logged without ``step=`` (see the module docstring).
        run_config: logged as the run config under ``"chronomoe"`` (pass ``monitor.manifest()``).
        init_options: keyword arguments of ``wandb.init`` for a run of the sink's own.
        config: what to log (:class:`~chronomoe.integrations.trackers.TrackerSinkConfig`); ``overrides`` replace
            its fields by name.

    Raises :class:`~chronomoe.errors.InvalidInputError` for a bad argument, before any run is started.
    """

    def __init__(
        self,
        *,
        run: Any = None,
        step_metric: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
        config: TrackerSinkConfig | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(config, overrides)
        options = self._take_run_arguments(run, step_metric, run_config, init_options)
        if isinstance(run, str) and run != CURRENT:
            raise InvalidInputError("run", run, f"must be None, a wandb run or {CURRENT!r}")
        self._run: Any = None
        if run is None:
            self._join(wandb.init(**options), log_config=False)
        elif run != CURRENT:
            self._join(run, log_config=True)

    @property
    def run(self) -> Any:
        """The W&B run logged to (``None`` until a :data:`CURRENT` run is looked up)."""
        return self._run

    def _join(self, run: Any, *, log_config: bool) -> None:
        if log_config and self.run_config:
            run.config.update({"chronomoe": self.run_config}, allow_val_change=True)
        if self.step_metric is not None:
            run.define_metric(self.step_metric)
            run.define_metric(f"{self.config.prefix}*", step_metric=self.step_metric)
        self._run = run

    def _current_run(self) -> Any:
        if self._run is None:
            if wandb.run is None:
                raise InvalidInputError("run", CURRENT, "no W&B run is active (wandb.run is None)")
            self._join(wandb.run, log_config=True)
        return self._run

    def _log(
        self, step: int, mode: str, scalars: dict[str, float], histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        run = self._current_run()
        data: dict[str, Any] = dict(scalars)
        data.update({key: wandb.Histogram(np_histogram=histogram) for key, histogram in histograms.items()})
        if self.step_metric is None:
            run.log(data, step=step)
        else:
            run.log({**data, self.step_metric: step})

    def _alert(self, transition: AlertTransition, alert: TrackerAlert) -> None:
        self._current_run().alert(title=alert.title, text=alert.text, level=alert.level)

    def _finish(self) -> None:
        if self.owns_run and self._run is not None:
            self._run.finish()
