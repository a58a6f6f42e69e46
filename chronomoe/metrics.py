"""Routing-topology metrics: pure numpy functions, no state, no I/O.

Two forms of every metric:

* the seed's per-layer functions (``compute_entropy(shares)`` and friends),
  which take one layer's 1-D array and return a Python scalar;
* :func:`layer_metrics_batch`, which takes a counts matrix
  ``[n_layers, max_experts]`` (layers may have different expert counts, given
  by ``n_experts``; columns at or beyond a layer's ``n_experts`` are padding and
  must be zero) and returns every metric for every layer in one vectorised
  call, with no Python loop over layers.

Units and conventions (both forms agree; a hypothesis test pins it):

* shares are fractions of the window's dispatched tokens, in [0, 1], summing
  to 1 over a layer's experts; a layer with no tokens has all-zero shares;
* entropy is Shannon entropy in nats over the non-zero shares, in
  [0, log(active experts)];
* ``n_effective = exp(entropy)``, in [1, n_experts] for a layer with tokens;
* ``top2_share`` is the sum of the two largest shares (the only share for a
  one-expert layer);
* dead means ``share == 0`` exactly (strict); nearly dead means
  ``0 < share < nearly_dead_threshold`` (0.01 by default, the seed's absolute
  threshold); under-used means ``0 < share < underuse_ratio / n_experts``
  (0.1 by default: alive, below a tenth of the uniform share), which keeps
  its meaning at any expert count;
* ``dead_fraction = dead / n_experts``, in [0, (n-1)/n] for a layer with tokens;
* ``expert_diversity = n_effective / n_experts``, in [1/n, 1];
* ``max_vio = max(load) / mean(load) - 1 = n_experts * max(share) - 1``
  (MaxVio, Wang et al. 2024), in [0, n-1]: 0 for perfect balance;
* ``load_cv``: coefficient of variation of the loads with the *population*
  standard deviation (``ddof=0``), ``sqrt(n * sum(share^2) - 1)``, in
  [0, sqrt(n-1)];
* Gini coefficient of the shares, 0 for perfect balance, ``(n-1)/n`` when one
  expert takes everything.

Every metric but the counts is a function of the shares alone, so scaling
all of a layer's counts by a positive factor changes none of them, and none
depends on the order of the experts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .events import RoutingEvent

NEARLY_DEAD_THRESHOLD = 0.01
"""Default share below which a non-dead expert counts as nearly dead (the seed's absolute threshold)."""

UNDERUSE_RATIO = 0.1
"""Default fraction of the uniform share ``1 / n_experts`` below which a non-dead expert counts as under-used."""


def _counts_from_events(events: Iterable[RoutingEvent], layer_id: int) -> np.ndarray:
    layer_counts = [e.expert_token_counts for e in events if e.layer_id == layer_id]
    if not layer_counts:
        return np.zeros(0, dtype=np.int64)
    totals: np.ndarray = np.stack(layer_counts).sum(axis=0, dtype=np.int64)
    return totals


def compute_utilization_shares(
    events: Sequence[RoutingEvent] | np.ndarray | Sequence[int],
    layer_id: int | None = None,
) -> np.ndarray:
    """Fraction of the window's dispatched tokens each expert received.

    The seed's form: ``compute_utilization_shares(events=window, layer_id=3)``
    sums the counts of ``layer_id``'s events. Without ``layer_id``, ``events``
    is one layer's 1-D counts array. Returns float64 shares of length
    ``n_experts`` summing to 1, all zeros when no token was dispatched, and an
    empty array when ``layer_id`` has no events.
    """
    if layer_id is not None:
        counts = _counts_from_events(events, layer_id)  # type: ignore[arg-type]
    else:
        counts = np.asarray(events)
    counts = counts.astype(np.float64, copy=False)
    total = counts.sum()
    if total == 0:
        return np.zeros_like(counts)
    shares: np.ndarray = counts / total
    return shares


def compute_entropy(shares: np.ndarray | Sequence[float], eps: float = 1e-10) -> float:
    """Shannon entropy (nats) of the shares; 0.0 for an empty or all-zero layer.

    ``eps`` is the seed's guard against ``log(0)``: shares at or below it
    contribute nothing (a dead expert's ``0 * log 0`` is 0). Shares of real
    windows are at least ``1 / token_count``, far above the default 1e-10.
    """
    values = np.asarray(shares, dtype=np.float64)
    positive = values[values > eps]
    return float(-np.sum(positive * np.log(positive)))


def compute_n_effective(entropy: float) -> float:
    """Effective number of experts, ``exp(entropy)``: n for n balanced experts, 1 for one."""
    return float(np.exp(entropy))


def compute_top2_share(shares: np.ndarray) -> float:
    """Sum of the two largest shares (the single share of a one-expert layer)."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size <= 2:
        return float(shares.sum())
    top_two = np.partition(shares, shares.size - 2)[-2:]
    return float(top_two.sum())


def count_dead_experts(shares: np.ndarray) -> int:
    """Experts with exactly zero share over the window (strict definition)."""
    return int(np.count_nonzero(np.asarray(shares) == 0))


def count_nearly_dead_experts(shares: np.ndarray, threshold: float = NEARLY_DEAD_THRESHOLD) -> int:
    """Experts with ``0 < share < threshold``: alive, but barely."""
    shares = np.asarray(shares)
    return int(np.count_nonzero((shares > 0) & (shares < threshold)))


def compute_max_vio(shares: np.ndarray | Sequence[float]) -> float:
    """MaxVio, ``max(load) / mean(load) - 1 = n_experts * max(share) - 1``; 0.0 for an empty or all-zero layer."""
    values = np.asarray(shares, dtype=np.float64)
    if values.size == 0 or values.sum() == 0:
        return 0.0
    return float(values.size * values.max() / values.sum() - 1.0)


def compute_load_cv(shares: np.ndarray | Sequence[float]) -> float:
    """Coefficient of variation of the loads, population std (``ddof=0``) over mean; 0.0 for an all-zero layer."""
    values = np.asarray(shares, dtype=np.float64)
    if values.size == 0 or values.sum() == 0:
        return 0.0
    return float(values.std() / values.mean())


def count_underused_experts(shares: np.ndarray | Sequence[float], ratio: float = UNDERUSE_RATIO) -> int:
    """Experts with ``0 < share < ratio / n_experts``: alive, below ``ratio`` of the uniform share."""
    values = np.asarray(shares, dtype=np.float64)
    return int(np.count_nonzero((values > 0) & (values < ratio / max(values.size, 1))))


def compute_gini_coefficient(shares: np.ndarray) -> float:
    """Gini coefficient of the shares: 0 for equal use, (n-1)/n when one expert takes all."""
    shares = np.sort(np.asarray(shares, dtype=np.float64))
    n = shares.size
    total = shares.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.dot(ranks, shares) / (n * total) - (n + 1) / n)


def compute_layer_metrics(
    events: Sequence[RoutingEvent] | np.ndarray | Sequence[int],
    layer_id: int | None = None,
) -> tuple[np.ndarray, float, float, float, int, int]:
    """The seed's bundle: ``(shares, entropy, n_effective, top2_share, dead_count, nearly_dead_count)``.

    Takes a list of events and a ``layer_id`` (the seed's form), or one
    layer's counts array. A layer with no events yields
    ``(empty array, 0.0, 0.0, 0.0, 0, 0)`` as in the seed.
    """
    shares = compute_utilization_shares(events, layer_id)
    if shares.size == 0:
        return shares, 0.0, 0.0, 0.0, 0, 0
    entropy = compute_entropy(shares)
    return (
        shares,
        entropy,
        compute_n_effective(entropy),
        compute_top2_share(shares),
        count_dead_experts(shares),
        count_nearly_dead_experts(shares),
    )


class LayerMetricsBatch(NamedTuple):
    """Every metric of every layer; arrays indexed by layer position.

    Shapes: ``L`` layers, ``E`` = the widest layer's expert count. Float
    metrics are NaN and counts are 0 for a layer with no dispatched tokens
    (``no_data``).
    """

    n_experts: np.ndarray  # [L] int64
    token_count: np.ndarray  # [L] int64, sum of the layer's counts
    shares: np.ndarray  # [L, E] float64, zero in padding columns
    entropy: np.ndarray  # [L] float64, nats
    n_effective: np.ndarray  # [L] float64
    top2_share: np.ndarray  # [L] float64
    dead_count: np.ndarray  # [L] int64
    nearly_dead_count: np.ndarray  # [L] int64
    underused_count: np.ndarray  # [L] int64
    dead_fraction: np.ndarray  # [L] float64
    expert_diversity: np.ndarray  # [L] float64, n_effective / n_experts
    max_vio: np.ndarray  # [L] float64
    load_cv: np.ndarray  # [L] float64, population std / mean
    gini: np.ndarray  # [L] float64
    no_data: np.ndarray  # [L] bool


def pad_counts(rows: Sequence[np.ndarray | Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged per-layer count vectors into a zero-padded matrix.

    Returns ``(counts [L, max_experts] int64, n_experts [L] int64)``.
    """
    n_experts = np.array([len(row) for row in rows], dtype=np.int64)
    width = int(n_experts.max()) if n_experts.size else 0
    counts = np.zeros((len(rows), width), dtype=np.int64)
    for position, row in enumerate(rows):
        counts[position, : len(row)] = row
    return counts, n_experts


def layer_metrics_batch(
    counts: np.ndarray,
    n_experts: np.ndarray | Sequence[int] | None = None,
    nearly_dead_threshold: float = NEARLY_DEAD_THRESHOLD,
    underuse_ratio: float = UNDERUSE_RATIO,
) -> LayerMetricsBatch:
    """All metrics for all layers of a counts matrix in one vectorised pass.

    Args:
        counts: ``[L, E]`` non-negative token counts per layer and expert.
        n_experts: ``[L]`` expert count of each layer (default: ``E`` for all);
            padding columns (index >= n_experts) must hold zeros.
        nearly_dead_threshold: share below which a live expert is nearly dead.
        underuse_ratio: fraction of the uniform share below which a live expert is under-used.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a [n_layers, n_experts] matrix, got shape {counts.shape}")
    n_layers, width = counts.shape
    if n_experts is None:
        n_experts = np.full(n_layers, width, dtype=np.int64)
    n_experts = np.asarray(n_experts, dtype=np.int64)

    token_count = counts.sum(axis=1, dtype=np.int64)
    no_data = token_count == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = counts / token_count[:, None].astype(np.float64)
    if no_data.any():
        shares[no_data] = 0.0  # 0/0 above
    positive = shares > 0

    # The other [L, E] intermediates share one buffer, ``terms``, computed in
    # place: each fresh array of that size costs an allocation and often new
    # pages (at 58 x 256, fresh temporaries took half of this function's time).
    # Entropy terms p * log(p); log(1) = 0 stands in for log(0), so a dead expert's term is 0.
    terms = np.where(positive, shares, 1.0)
    np.log(terms, out=terms)
    terms *= shares
    entropy = -terms.sum(axis=1)
    n_effective = np.exp(entropy)

    # Padding holds no share: the layer's experts without a share are its dead ones.
    dead_count = n_experts - np.count_nonzero(positive, axis=1)
    nearly_dead_count = np.count_nonzero(positive & (shares < nearly_dead_threshold), axis=1).astype(np.int64)
    underused_count = np.count_nonzero(positive & (shares < (underuse_ratio / n_experts)[:, None]), axis=1)
    # Shares sum to 1, so the loads' population variance over their squared mean is n * sum(share^2) - 1;
    # rounding can take it a hair below 0 for perfect balance.
    load_cv = np.sqrt(np.maximum(n_experts * np.einsum("le,le->l", shares, shares) - 1.0, 0.0))

    # One ascending sort per row serves Top2 (its last two columns) and Gini.
    # Padding is zero, so it sorts among the dead experts and every live share
    # keeps its place: a layer's k-th smallest share sits at column E - n + k.
    # A zero adds nothing to Gini's rank-weighted sum, whatever its rank.
    ordered = np.sort(shares, axis=1)
    top2_share = ordered[:, -2:].sum(axis=1)
    max_vio = n_experts * ordered[:, -1] - 1.0
    np.subtract(np.arange(1.0, width + 1.0)[None, :], (width - n_experts)[:, None], out=terms)  # ranks
    terms *= ordered
    weighted = terms.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gini = 2.0 * weighted / n_experts - (n_experts + 1) / n_experts

    nan = np.nan
    return LayerMetricsBatch(
        n_experts=n_experts,
        token_count=token_count,
        shares=shares,
        entropy=np.where(no_data, nan, entropy),
        n_effective=np.where(no_data, nan, n_effective),
        top2_share=np.where(no_data, nan, top2_share),
        dead_count=np.where(no_data, 0, dead_count),
        nearly_dead_count=np.where(no_data, 0, nearly_dead_count),
        underused_count=np.where(no_data, 0, underused_count).astype(np.int64),
        dead_fraction=np.where(no_data, nan, dead_count / n_experts),
        expert_diversity=np.where(no_data, nan, n_effective / n_experts),
        max_vio=np.where(no_data, nan, max_vio),
        load_cv=np.where(no_data, nan, load_cv),
        gini=np.where(no_data, nan, gini),
        no_data=no_data,
    )


def sum_counts_by_layer(layer_positions: np.ndarray, rows: np.ndarray, n_layers: int) -> np.ndarray:
    """Sum count rows into per-layer totals: ``out[l] = rows[layer_positions == l].sum(0)``.

    ``rows`` is ``[N, E]``; returns ``[n_layers, E]`` int64. Order of the rows
    does not matter. When rows come step-major in a fixed layer order (what
    the recorder and the writer produce), the sum is a reshape and one
    reduction instead of a scatter.
    """
    n_rows, width = rows.shape
    if n_rows and n_rows % n_layers == 0:
        steps = n_rows // n_layers
        regular = np.array_equal(layer_positions, np.tile(np.arange(n_layers), steps))
        if regular:
            summed: np.ndarray = rows.reshape(steps, n_layers, width).sum(axis=0, dtype=np.int64)
            return summed
    totals = np.zeros((n_layers, width), dtype=np.int64)
    np.add.at(totals, layer_positions, rows)
    return totals


CROSS_LAYER_PERCENTILES = (50, 90, 95)
"""Percentiles of a metric over layers that snapshots report (numpy's default, linear interpolation)."""


def cross_layer_summary(values: np.ndarray, layer_ids: np.ndarray, worst: str) -> dict[str, float | int] | None:
    """A metric over the layers of one snapshot: mean, min, max, percentiles, and the worst layer's id.

    Args:
        values: ``[L]`` the metric per layer, NaN for a layer without data (left out).
        layer_ids: ``[L]`` the layers' ids.
        worst: ``"min"`` when a low value is bad (Neff), ``"max"`` when a high one is (Top2, MaxVio); ties
            go to the lowest layer id.

    Returns ``{"mean", "min", "max", "p50", "p90", "p95", "worst_layer_id"}``, or ``None`` when no layer
    holds data.
    """
    held = ~np.isnan(values)
    if not held.any():
        return None
    present, ids = values[held], layer_ids[held]
    order = np.lexsort((ids, present if worst == "min" else -present))
    percentiles = np.percentile(present, CROSS_LAYER_PERCENTILES)
    return {
        "mean": float(present.mean()),
        "min": float(present.min()),
        "max": float(present.max()),
        **{f"p{q}": float(value) for q, value in zip(CROSS_LAYER_PERCENTILES, percentiles, strict=True)},
        "worst_layer_id": int(ids[order[0]]),
    }
