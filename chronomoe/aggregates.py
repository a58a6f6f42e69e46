"""Cross-layer aggregates of a snapshot: mean, min, max, p50/p90/p95 and the worst layer of Neff, Top2 and
MaxVio (what a dashboard of 58 layers shows at a glance; computed by
:func:`~chronomoe.metrics.cross_layer_summary`)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .events import Integer, Record
from .metrics import LayerMetricsBatch, cross_layer_summary


class LayerStats(Record):
    """One metric over the layers of a snapshot that hold data (see :func:`~chronomoe.metrics.cross_layer_summary`)."""

    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    worst_layer_id: Integer = Field(ge=0)


class CrossLayerAggregates(Record):
    """Neff, Top2 and MaxVio over the layers of a snapshot: what a dashboard of 58 layers shows at a glance.

    The worst layer is the one with the lowest Neff, the highest Top2, the highest MaxVio.
    """

    n_effective: LayerStats
    top2_share: LayerStats
    max_vio: LayerStats


def cross_layer_aggregates(batch: LayerMetricsBatch, layer_ids: np.ndarray) -> CrossLayerAggregates | None:
    """Neff, Top2 and MaxVio of ``batch`` (``[L]`` per metric, NaN without data) over the layers ``layer_ids``
    (``[L]``); ``None`` when no layer holds data."""
    summaries = {
        name: cross_layer_summary(getattr(batch, name), layer_ids, worst)
        for name, worst in (("n_effective", "min"), ("top2_share", "max"), ("max_vio", "max"))
    }
    stats = {name: LayerStats.trusted(**summary) for name, summary in summaries.items() if summary is not None}
    # One metric is NaN exactly where the others are (no data), so either all are summarised or none.
    return CrossLayerAggregates.trusted(**stats) if len(stats) == len(summaries) else None
