"""Laws of the balance metrics practitioners log (MaxVio, load CV, expert diversity, dead fraction,
under-use) and of the cross-layer aggregates: bounds, permutation and scale invariance, known values
on uniform and one-hot loads, and the vectorised form equal to the per-layer functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chronomoe import Monitor, SystemSnapshot
from chronomoe.metrics import (
    compute_entropy,
    compute_load_cv,
    compute_max_vio,
    compute_n_effective,
    compute_utilization_shares,
    count_dead_experts,
    count_nearly_dead_experts,
    count_underused_experts,
    cross_layer_summary,
    layer_metrics_batch,
)

FLOAT = 1e-9
"""Slack for float sums of up to 512 terms compared with an exact value."""

counts_values = st.one_of(st.just(0), st.integers(1, 10), st.integers(0, 100_000))


def layer_counts(max_experts: int = 64) -> st.SearchStrategy[np.ndarray]:
    return (
        st.integers(1, max_experts)
        .flatmap(lambda n: arrays(np.int64, n, elements=counts_values))
        .filter(lambda counts: counts.sum() > 0)
    )


def batch_row(counts: np.ndarray, **options):
    """The vectorised metrics of one layer."""
    batch = layer_metrics_batch(counts[None, :], **options)
    return {name: getattr(batch, name)[0] for name in batch._fields if name != "shares"}


# -- bounds ---------------------------------------------------------------------------------


@settings(max_examples=150)
@given(layer_counts())
def test_max_vio_lies_between_zero_and_n_minus_one(counts):
    n = len(counts)
    assert -FLOAT <= compute_max_vio(compute_utilization_shares(counts)) <= n - 1 + FLOAT


@settings(max_examples=150)
@given(layer_counts())
def test_load_cv_lies_between_zero_and_the_square_root_of_n_minus_one(counts):
    n = len(counts)
    assert 0 <= compute_load_cv(compute_utilization_shares(counts)) <= math.sqrt(n - 1) + FLOAT


@settings(max_examples=150)
@given(layer_counts())
def test_expert_diversity_lies_between_one_over_n_and_one(counts):
    row = batch_row(counts)
    n = len(counts)
    assert 1 / n - FLOAT <= row["expert_diversity"] <= 1 + FLOAT


@settings(max_examples=150)
@given(layer_counts())
def test_dead_fraction_is_dead_count_over_n_and_below_one(counts):
    row = batch_row(counts)
    assert row["dead_fraction"] == count_dead_experts(counts) / len(counts) < 1


@settings(max_examples=150)
@given(layer_counts(), st.floats(0.01, 1.0))
def test_underused_experts_are_alive_and_below_the_ratio_of_the_uniform_share(counts, ratio):
    shares = compute_utilization_shares(counts)
    expected = sum(1 for share in shares if 0 < share < ratio / len(counts))
    assert (
        count_underused_experts(shares, ratio) == expected == batch_row(counts, underuse_ratio=ratio)["underused_count"]
    )


# -- invariances ----------------------------------------------------------------------------


@settings(max_examples=100)
@given(layer_counts(max_experts=32), st.randoms(use_true_random=False))
def test_balance_metrics_are_invariant_to_expert_permutation(counts, random):
    order = list(range(len(counts)))
    random.shuffle(order)
    row, permuted = batch_row(counts), batch_row(counts[order])
    for name in ("max_vio", "dead_fraction", "underused_count"):
        assert permuted[name] == row[name], name
    for name in ("load_cv", "expert_diversity"):  # float sums in another order
        assert math.isclose(permuted[name], row[name], rel_tol=FLOAT, abs_tol=FLOAT), name


@settings(max_examples=100)
@given(layer_counts(), st.integers(2, 10_000))
def test_balance_metrics_are_invariant_to_scaling_all_counts(counts, factor):
    # Shares k*c / (k*T) round to the same floats as c / T, so every function of the shares is equal.
    row, scaled = batch_row(counts), batch_row(counts * factor)
    for name in ("max_vio", "load_cv", "expert_diversity", "dead_fraction", "underused_count"):
        assert scaled[name] == row[name], name


# -- known values ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_experts", [1, 2, 8, 256])
def test_uniform_loads_have_no_violation_no_variation_full_diversity(n_experts):
    row = batch_row(np.full(n_experts, 1000))
    assert row["max_vio"] == pytest.approx(0.0, abs=1e-12)
    assert row["load_cv"] == pytest.approx(0.0, abs=1e-6)
    assert row["expert_diversity"] == pytest.approx(1.0)
    assert (row["dead_fraction"], row["underused_count"]) == (0.0, 0)


@pytest.mark.parametrize("n_experts", [2, 8, 256])
def test_one_hot_loads_have_the_largest_violation_and_variation(n_experts):
    counts = np.zeros(n_experts, dtype=np.int64)
    counts[3 % n_experts] = 500
    row = batch_row(counts)
    assert row["max_vio"] == n_experts - 1
    assert row["load_cv"] == pytest.approx(math.sqrt(n_experts - 1))
    assert row["expert_diversity"] == pytest.approx(1 / n_experts)
    assert row["dead_fraction"] == (n_experts - 1) / n_experts


def test_a_balanced_256_expert_layer_is_not_under_used_though_every_expert_is_nearly_dead():
    shares = compute_utilization_shares(np.full(256, 100))
    assert count_nearly_dead_experts(shares) == 256  # the seed's absolute 0.01 stops meaning anything here
    assert count_underused_experts(shares) == 0


def test_max_vio_is_the_papers_max_load_over_mean_load_minus_one():
    counts = np.array([300, 100, 100, 100])  # mean 150
    assert compute_max_vio(compute_utilization_shares(counts)) == pytest.approx(300 / 150 - 1)


def test_load_cv_uses_the_population_standard_deviation():
    counts = np.array([400, 100, 100, 100])
    assert compute_load_cv(compute_utilization_shares(counts)) == pytest.approx(np.std(counts) / np.mean(counts))


def test_expert_diversity_is_n_effective_over_n():
    counts = np.array([50, 30, 20, 0])
    shares = compute_utilization_shares(counts)
    assert batch_row(counts)["expert_diversity"] == pytest.approx(compute_n_effective(compute_entropy(shares)) / 4)


@settings(max_examples=100)
@given(layer_counts())
def test_vectorised_max_vio_and_load_cv_equal_the_per_layer_functions(counts):
    shares = compute_utilization_shares(counts)
    row = batch_row(counts)
    assert math.isclose(row["max_vio"], compute_max_vio(shares), rel_tol=FLOAT, abs_tol=FLOAT)
    assert math.isclose(row["load_cv"], compute_load_cv(shares), rel_tol=1e-6, abs_tol=1e-6)  # sqrt near 0


# -- cross-layer aggregates -------------------------------------------------------------------


@settings(max_examples=100)
@given(st.lists(st.one_of(st.floats(0, 100), st.just(math.nan)), min_size=1, max_size=60))
def test_cross_layer_summary_orders_its_statistics_and_names_the_worst_layer(values):
    array = np.array(values)
    ids = np.arange(len(values)) * 2
    summary = cross_layer_summary(array, ids, "max")
    present = array[~np.isnan(array)]
    if not present.size:
        assert summary is None
        return
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p95"] <= summary["max"]
    assert summary["min"] - FLOAT <= summary["mean"] <= summary["max"] + FLOAT
    worst = summary["worst_layer_id"]
    assert array[worst // 2] == present.max() and worst == ids[np.flatnonzero(array == present.max())[0]]


def test_snapshot_aggregates_take_the_worst_layer_per_metric():
    monitor = Monitor("aggregates")
    snapshot = monitor.observe([[100] * 8, [800, 0, 0, 0, 0, 0, 0, 0], [400, 400, 0, 0, 0, 0, 0, 0]], step=1)
    aggregates = snapshot.aggregates
    assert aggregates.n_effective.worst_layer_id == 1 and aggregates.n_effective.min == pytest.approx(1.0)
    assert aggregates.top2_share.worst_layer_id == 1 and aggregates.top2_share.max == 1.0
    assert aggregates.max_vio.worst_layer_id == 1 and aggregates.max_vio.max == 7.0
    assert aggregates.max_vio.mean == pytest.approx((0 + 7 + 3) / 3)


def test_layers_without_data_are_left_out_of_the_aggregates_and_none_without_any_data():
    monitor = Monitor("aggregates")
    snapshot = monitor.observe([[100] * 4, [0] * 4], step=1)
    assert snapshot.aggregates.n_effective.mean == pytest.approx(4.0)
    assert monitor.observe([[0] * 4, [0] * 4], step=2).aggregates is None


def test_snapshot_records_the_underuse_ratio_it_counted_with():
    snapshot = SystemSnapshot.from_counts([[10, 100, 100, 100]], step=1, underuse_ratio=0.5)
    assert snapshot.underuse_ratio == 0.5
    assert snapshot.layers[0].underused_count == 1
    monitor = Monitor("ratio", underuse_ratio=0.05)
    assert monitor.observe([[1, 100, 100, 100]], step=1).underuse_ratio == 0.05


def test_a_transition_carries_the_balance_metrics():
    monitor = Monitor("transitions", rules={"pre_persistence": 1})
    (transition,) = monitor.observe([[800, 100, 50, 50, 0, 0, 0, 0]], step=1).transitions
    assert transition.metrics["max_vio"] == pytest.approx(8 * 0.8 - 1)
    assert {"load_cv", "expert_diversity", "dead_fraction", "underused_count"} <= set(transition.metrics)
