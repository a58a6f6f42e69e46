"""Metric laws over random count matrices (hypothesis) and the seed's metric semantics (examples).

Floating point tolerances appear only where a float sum is compared with an
exact value or summed in another order; each one says why.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chronomoe.metrics import (
    compute_entropy,
    compute_gini_coefficient,
    compute_layer_metrics,
    compute_n_effective,
    compute_top2_share,
    compute_utilization_shares,
    count_dead_experts,
    count_nearly_dead_experts,
    layer_metrics_batch,
    pad_counts,
)

FLOAT_SUM = 1e-12
"""Relative/absolute slack for a sum of up to 64 float64 terms compared with an exact value."""

counts_values = st.one_of(st.just(0), st.integers(1, 10), st.integers(0, 100_000))
"""Per-expert counts: zeros (dead experts) often, small and large counts."""


def layer_counts(min_experts: int = 1, max_experts: int = 64) -> st.SearchStrategy[np.ndarray]:
    """One layer's counts, int64, at least one token dispatched."""
    return (
        st.integers(min_experts, max_experts)
        .flatmap(lambda n: arrays(np.int64, n, elements=counts_values))
        .filter(lambda counts: counts.sum() > 0)
    )


count_matrices = st.tuples(st.integers(1, 6), st.integers(1, 32)).flatmap(
    lambda shape: arrays(np.int64, shape, elements=counts_values)
)
"""[n_layers, n_experts] matrices; some rows may be all zero (no_data)."""

ragged_layers = st.lists(
    st.integers(1, 32).flatmap(lambda n: arrays(np.int64, n, elements=counts_values)),
    min_size=1,
    max_size=6,
)
"""Per-layer count vectors of different lengths (layers with different expert counts)."""


# -- laws of one layer -----------------------------------------------------------


@settings(max_examples=150)
@given(layer_counts())
def test_shares_lie_in_unit_interval_and_sum_to_one(counts):
    shares = compute_utilization_shares(counts)
    assert shares.shape == counts.shape
    assert ((shares >= 0) & (shares <= 1)).all()
    assert math.isclose(shares.sum(), 1.0, rel_tol=FLOAT_SUM)  # float sum of n quotients


@settings(max_examples=150)
@given(layer_counts())
def test_entropy_lies_between_zero_and_log_of_active_experts(counts):
    entropy = compute_entropy(compute_utilization_shares(counts))
    active = np.count_nonzero(counts)
    assert 0 <= entropy <= math.log(active) + FLOAT_SUM  # the uniform case meets log(active) up to rounding


@settings(max_examples=150)
@given(layer_counts())
def test_n_effective_lies_between_one_and_n_experts(counts):
    n_effective = compute_n_effective(compute_entropy(compute_utilization_shares(counts)))
    assert 1 <= n_effective <= len(counts) * (1 + FLOAT_SUM)  # exp(log n) may round above n


@settings(max_examples=150)
@given(layer_counts())
def test_n_effective_equals_n_experts_only_for_uniform_counts(counts):
    n_effective = compute_n_effective(compute_entropy(compute_utilization_shares(counts)))
    if (counts == counts[0]).all():
        assert math.isclose(n_effective, len(counts), rel_tol=FLOAT_SUM)  # exp(log n) rounds
    else:
        assert n_effective < len(counts)


@given(st.integers(1, 64), st.integers(1, 10**6))
def test_n_effective_of_uniform_counts_is_n_experts(n_experts, count):
    counts = np.full(n_experts, count)
    n_effective = compute_n_effective(compute_entropy(compute_utilization_shares(counts)))
    assert math.isclose(n_effective, n_experts, rel_tol=FLOAT_SUM)  # exp(log n) rounds


@settings(max_examples=150)
@given(layer_counts())
def test_n_effective_is_one_exactly_when_a_single_expert_is_active(counts):
    n_effective = compute_n_effective(compute_entropy(compute_utilization_shares(counts)))
    if np.count_nonzero(counts) == 1:
        assert n_effective == 1.0
    else:
        assert n_effective > 1.0


@settings(max_examples=150)
@given(layer_counts())
def test_top2_share_lies_between_max_share_and_one(counts):
    shares = compute_utilization_shares(counts)
    top2 = compute_top2_share(shares)
    assert shares.max() <= top2 <= 1 + FLOAT_SUM  # two shares that are all the mass may sum to 1 + ulp


@settings(max_examples=150)
@given(layer_counts())
def test_dead_experts_are_the_experts_not_active(counts):
    shares = compute_utilization_shares(counts)
    assert count_dead_experts(shares) == len(counts) - np.count_nonzero(counts)


@settings(max_examples=100)
@given(layer_counts(max_experts=32), st.randoms(use_true_random=False))
def test_metrics_are_invariant_to_expert_permutation(counts, random):
    order = list(range(len(counts)))
    random.shuffle(order)
    _, entropy, n_effective, top2, dead, nearly_dead = compute_layer_metrics(counts)
    _, p_entropy, p_n_effective, p_top2, p_dead, p_nearly_dead = compute_layer_metrics(counts[order])
    # Entropy sums the same terms in another order: equal up to rounding.
    assert math.isclose(p_entropy, entropy, rel_tol=FLOAT_SUM, abs_tol=FLOAT_SUM)
    assert math.isclose(p_n_effective, n_effective, rel_tol=FLOAT_SUM)
    assert (p_top2, p_dead, p_nearly_dead) == (top2, dead, nearly_dead)
    assert math.isclose(
        compute_gini_coefficient(compute_utilization_shares(counts[order])),
        compute_gini_coefficient(compute_utilization_shares(counts)),
        abs_tol=FLOAT_SUM,
    )


@settings(max_examples=100)
@given(layer_counts(), st.integers(2, 10_000))
def test_metrics_are_invariant_to_scaling_all_counts(counts, factor):
    # Exact: k*c / (k*T) and c / T are the same real number, both exactly
    # representable operands, so IEEE division rounds them to the same float.
    shares, *scalars = compute_layer_metrics(counts)
    scaled_shares, *scaled_scalars = compute_layer_metrics(counts * factor)
    assert np.array_equal(scaled_shares, shares)
    assert scaled_scalars == scalars


# -- vectorised == per-layer -------------------------------------------------------


def assert_batch_row_equals_seed_functions(batch, row: int, counts: np.ndarray) -> None:
    """The batch's metrics of ``row`` equal the seed's per-layer functions on ``counts``."""
    shares, entropy, n_effective, top2, dead, nearly_dead = compute_layer_metrics(counts)
    width = len(counts)
    assert batch.n_experts[row] == width
    assert batch.token_count[row] == counts.sum()
    assert not batch.no_data[row]
    assert np.array_equal(batch.shares[row, :width], shares)
    assert not batch.shares[row, width:].any()
    # Entropy and Gini are float sums taken in a different order (masked row vs filtered array).
    assert math.isclose(batch.entropy[row], entropy, rel_tol=FLOAT_SUM, abs_tol=FLOAT_SUM)
    assert math.isclose(batch.n_effective[row], n_effective, rel_tol=FLOAT_SUM)
    assert math.isclose(batch.gini[row], compute_gini_coefficient(shares), abs_tol=FLOAT_SUM)
    assert batch.top2_share[row] == top2
    assert batch.dead_count[row] == dead
    assert batch.nearly_dead_count[row] == nearly_dead


@settings(max_examples=100)
@given(count_matrices)
def test_layer_metrics_batch_equals_per_layer_functions(matrix):
    batch = layer_metrics_batch(matrix)
    for row, counts in enumerate(matrix):
        if counts.sum():
            assert_batch_row_equals_seed_functions(batch, row, counts)


@settings(max_examples=100)
@given(ragged_layers)
def test_layer_metrics_batch_equals_per_layer_functions_for_ragged_layers(rows):
    matrix, n_experts = pad_counts(rows)
    assert n_experts.tolist() == [len(row) for row in rows]
    batch = layer_metrics_batch(matrix, n_experts)
    for row, counts in enumerate(rows):
        if counts.sum():
            assert_batch_row_equals_seed_functions(batch, row, counts)


@settings(max_examples=50)
@given(count_matrices)
def test_layer_metrics_batch_marks_layers_without_tokens_as_no_data(matrix):
    batch = layer_metrics_batch(matrix)
    empty = matrix.sum(axis=1) == 0
    assert np.array_equal(batch.no_data, empty)
    for metric in (batch.entropy, batch.n_effective, batch.top2_share, batch.gini):
        assert np.isnan(metric[empty]).all() and not np.isnan(metric[~empty]).any()
    assert not batch.dead_count[empty].any() and not batch.nearly_dead_count[empty].any()
    assert not batch.shares[empty].any()


def test_pad_counts_zero_pads_to_the_widest_layer():
    matrix, n_experts = pad_counts([[1, 2], [3, 4, 5, 6], [7]])
    assert matrix.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]]
    assert n_experts.tolist() == [2, 4, 1]
    assert matrix.dtype == np.int64


# -- the seed's semantics, by example ----------------------------------------------


def test_dead_means_share_exactly_zero_not_below_a_threshold():
    shares = compute_utilization_shares([10**6, 1, 0, 0])
    assert count_dead_experts(shares) == 2


def test_nearly_dead_means_share_strictly_between_zero_and_one_percent():
    # shares: 0.989, 0.001, 0.01 (not nearly dead: the bound is strict), 0
    shares = compute_utilization_shares([989, 1, 10, 0])
    assert count_nearly_dead_experts(shares) == 1
    assert count_dead_experts(shares) == 1


def test_nearly_dead_threshold_is_a_parameter():
    shares = compute_utilization_shares([90, 5, 5])
    assert count_nearly_dead_experts(shares) == 0
    assert count_nearly_dead_experts(shares, threshold=0.06) == 2


def test_n_effective_is_exp_of_entropy_in_nats():
    shares = compute_utilization_shares([50, 50, 0, 0])
    assert compute_entropy(shares) == pytest.approx(math.log(2), rel=FLOAT_SUM)
    assert compute_n_effective(compute_entropy(shares)) == pytest.approx(2.0, rel=FLOAT_SUM)


def test_top2_share_sums_the_two_largest_shares():
    assert compute_top2_share(compute_utilization_shares([10, 40, 20, 30])) == pytest.approx(0.7, rel=FLOAT_SUM)


def test_top2_share_of_a_one_expert_layer_is_its_only_share():
    assert compute_top2_share(np.array([1.0])) == 1.0


def test_gini_is_zero_for_balance_and_n_minus_one_over_n_for_one_expert():
    assert compute_gini_coefficient(compute_utilization_shares([5, 5, 5, 5])) == pytest.approx(0.0, abs=FLOAT_SUM)
    assert compute_gini_coefficient(compute_utilization_shares([0, 0, 9, 0])) == pytest.approx(0.75, rel=FLOAT_SUM)


def test_shares_of_a_layer_without_tokens_are_all_zero():
    shares = compute_utilization_shares([0, 0, 0])
    assert shares.tolist() == [0.0, 0.0, 0.0]
    assert compute_entropy(shares) == 0.0


def test_layer_metrics_from_events_sum_the_layers_counts(make_event):
    events = [
        make_event([3, 0, 1], layer_id=0),
        make_event([1, 0, 3], layer_id=0),
        make_event([9, 9, 9], layer_id=1),
    ]
    shares, _entropy, n_effective, top2, dead, nearly_dead = compute_layer_metrics(events, layer_id=0)
    assert shares.tolist() == [0.5, 0.0, 0.5]
    assert (top2, dead, nearly_dead) == (1.0, 1, 0)
    assert n_effective == pytest.approx(2.0, rel=FLOAT_SUM)


def test_layer_metrics_of_a_layer_without_events_are_empty(make_event):
    shares, *scalars = compute_layer_metrics([make_event([1, 2], layer_id=0)], layer_id=3)
    assert shares.size == 0
    assert scalars == [0.0, 0.0, 0.0, 0, 0]


@settings(max_examples=100)
@given(layer_counts())
def test_seed_functions_agree_with_the_plain_python_reference(reference_metrics, counts):
    expected = reference_metrics(counts.tolist())
    shares, entropy, n_effective, top2, dead, nearly_dead = compute_layer_metrics(counts)
    # The reference sums in plain Python, in another order: equal up to rounding.
    assert math.isclose(entropy, expected["entropy"], rel_tol=FLOAT_SUM, abs_tol=FLOAT_SUM)
    assert math.isclose(n_effective, expected["n_effective"], rel_tol=FLOAT_SUM)
    assert math.isclose(top2, expected["top2_share"], rel_tol=FLOAT_SUM)
    assert math.isclose(compute_gini_coefficient(shares), expected["gini"], abs_tol=1e-9)  # O(n^2) sum
    assert (dead, nearly_dead) == (expected["dead_expert_count"], expected["nearly_dead_count"])
