"""trackio sink: the tracker keys of :mod:`~chronomoe.integrations.trackers` in a trackio run (local SQLite).

Usage (a run of its own)::

    sink = TrackioSink(init_options={"project": "moe", "name": "run1"}, run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        train()
    sink.close()

or inside the run that transformers' ``TrackioCallback`` (``report_to="trackio"``) starts when training begins::

    sink = TrackioSink(run=CURRENT, step_metric=TRANSFORMERS_STEP_METRIC)

* Scalars and each layer's expert-load histogram (``trackio.Histogram``, at
  most 512 bins) go through ``run.log``; alert transitions are ``run.alert``
  calls (ERROR, WARN, INFO), stored in trackio's database and printed by it
  on the terminal.
* **Run config.** A run the sink starts gets ``{"chronomoe": run_config}`` in
  its config. trackio stores a run's config once, with the run's first log,
  and has no call to change it afterwards, so a joined run's config is left
  as its owner made it (the run folder's ``run_manifest.json`` still holds
  the manifest).
* **Step axis.** trackio stores any step, but a ``log`` without ``step=``
  takes the step after the largest one logged so far: a sink logging
  ``step=snapshot.step`` into a run whose owner logs without ``step=``
  (transformers' ``TrackioCallback`` does, keyed to ``train/global_step``)
  would push the owner's steps ahead. Give the owner's step key as
  ``step_metric`` and the sink logs without ``step=`` and adds the training
  step under that key; with ``step_metric=None`` it logs with
  ``step=snapshot.step`` (a run of its own).
* A run the sink started is finished by :meth:`close` (``trackio.init``
  finishes the current trackio run first: that is trackio's rule); a joined
  run is left open.

trackio reads ``TRACKIO_DIR`` (where its SQLite files go) when it is first
imported: set it before importing this module. Needs
``pip install 'chronomoe[trackio]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import trackio
from trackio import context_vars

from ..alerts import AlertTransition
from ..errors import InvalidInputError
from .trackers import CURRENT, TrackerAlert, TrackerSink, TrackerSinkConfig

TRANSFORMERS_STEP_METRIC = "train/global_step"
"""The step key of transformers' ``TrackioCallback``."""


class TrackioSink(TrackerSink):
    """Logs a monitor's snapshots, transitions and decisions to a trackio run.

    Args:
        run: ``None`` starts a run with ``trackio.init(**init_options)`` (``project`` is required there); a
            ``trackio.Run`` joins it; :data:`~chronomoe.integrations.trackers.CURRENT` joins trackio's current
            run at the first publication.
        step_metric: the owner's step key when joining a run logged without ``step=`` (see the module docstring).
        run_config: the config of a run the sink starts, under ``"chronomoe"`` (pass ``monitor.manifest()``);
            refused with a run to join (see the module docstring).
        init_options: keyword arguments of ``trackio.init`` for a run of the sink's own.
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
        if run is not None and run_config is not None:
            raise InvalidInputError("run_config", "...", "trackio cannot add to the config of a run it did not start")
        if run is None and "project" not in (init_options or {}):
            raise InvalidInputError("init_options", init_options, "must name the trackio project: {'project': ...}")
        if run is not None and run != CURRENT and not isinstance(run, trackio.Run):
            raise InvalidInputError("run", run, f"must be None, a trackio.Run or {CURRENT!r}")
        self._run: trackio.Run | None = None
        if run is None:
            self._run = trackio.init(**options)
        elif run != CURRENT:
            self._run = run

    @property
    def run(self) -> trackio.Run | None:
        """The trackio run logged to (``None`` until a :data:`CURRENT` run is looked up)."""
        return self._run

    def _current_run(self) -> trackio.Run:
        if self._run is None:
            self._run = context_vars.current_run.get()
            if self._run is None:
                raise InvalidInputError("run", CURRENT, "no trackio run is active (call trackio.init first)")
        return self._run

    def _log(
        self, step: int, mode: str, scalars: dict[str, float], histograms: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        run = self._current_run()
        data: dict[str, Any] = dict(scalars)
        data.update({key: trackio.Histogram(np_histogram=histogram) for key, histogram in histograms.items()})
        if self.step_metric is None:
            run.log(data, step=step)
        else:
            run.log({**data, self.step_metric: step})

    def _alert(self, transition: AlertTransition, alert: TrackerAlert) -> None:
        # With a step_metric trackio's steps are not training steps; the alert then takes trackio's current one.
        step = transition.step if self.step_metric is None else None
        self._current_run().alert(alert.title, alert.text, level=trackio.AlertLevel[alert.level], step=step)

    def _finish(self) -> None:
        if not self.owns_run or self._run is None:
            return
        if context_vars.current_run.get() is self._run:
            trackio.finish()  # also clears trackio's current run
        else:
            self._run.finish()
