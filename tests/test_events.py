"""RoutingEvent: validation (each rule, by example), derived fields, construction from router output, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import RoutingEvent

FIELDS = {"run_id": "run", "step": 7, "mode": "TRAIN", "layer_id": 2, "n_experts": 4, "top_k": 2}


def event(**changes):
    return RoutingEvent(**{**FIELDS, "expert_token_counts": [3, 0, 1, 4], **changes})


# -- validation rules ----------------------------------------------------------------


def test_negative_count_is_rejected_naming_field_and_value(assert_rejected):
    assert_rejected(lambda: event(expert_token_counts=[3, 0, -2, 4]), "expert_token_counts", "-2")


def test_fractional_count_is_rejected_naming_field_and_value(assert_rejected):
    assert_rejected(lambda: event(expert_token_counts=[3, 0, 1.5, 4]), "expert_token_counts", "1.5")


def test_non_finite_count_is_rejected_naming_field_and_value(assert_rejected):
    assert_rejected(lambda: event(expert_token_counts=[3, float("nan"), 1, 4]), "expert_token_counts", "nan")


@pytest.mark.parametrize(
    "counts, shown",
    [(["3", "0", "1", "4"], "'3'"), ([True, False, True, True], "True"), ([[3, 0], [1, 4]], "[[3, 0], [1, 4]]")],
    ids=["strings", "booleans", "two-dimensional"],
)
def test_counts_that_are_not_a_vector_of_integers_are_rejected(assert_rejected, counts, shown):
    assert_rejected(lambda: event(expert_token_counts=counts), "expert_token_counts", shown)


def test_integral_float_counts_are_accepted_as_integers():
    assert event(expert_token_counts=[3.0, 0.0, 1.0, 4.0]).expert_token_counts.tolist() == [3, 0, 1, 4]


def test_counts_length_other_than_n_experts_is_rejected(assert_rejected):
    assert_rejected(lambda: event(expert_token_counts=[3, 0, 1]), "expert_token_counts has 3 entries", "n_experts=4")


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_is_rejected(assert_rejected, top_k):
    assert_rejected(lambda: event(top_k=top_k), "top_k", f"input_value={top_k}")


def test_top_k_above_n_experts_is_rejected(assert_rejected):
    assert_rejected(lambda: event(top_k=5), "top_k=5", "n_experts=4")


def test_top_k_equal_to_n_experts_is_accepted():
    assert event(top_k=4).top_k == 4


@pytest.mark.parametrize("mode", ["EVAL", "train", ""])
def test_mode_other_than_train_or_infer_is_rejected(assert_rejected, mode):
    assert_rejected(lambda: event(mode=mode), "mode", repr(mode))


def test_infer_mode_is_accepted():
    assert event(mode="INFER").mode == "INFER"


@pytest.mark.parametrize("field", ["step", "layer_id"])
def test_negative_step_or_layer_id_is_rejected(assert_rejected, field):
    assert_rejected(lambda: event(**{field: -1}), field, "input_value=-1")


@pytest.mark.parametrize("field", ["step", "layer_id", "n_experts", "top_k"])
def test_non_integer_index_fields_are_rejected(assert_rejected, field):
    assert_rejected(lambda: event(**{field: 2.5}), field, "2.5")


def test_zero_experts_is_rejected(assert_rejected):
    assert_rejected(lambda: event(n_experts=0, top_k=1, expert_token_counts=[]), "n_experts", "input_value=0")


@pytest.mark.parametrize("field", ["loss", "aux_loss"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_losses_are_rejected(assert_rejected, field, value):
    assert_rejected(lambda: event(**{field: value}), field, repr(value))


def test_empty_run_id_is_rejected(assert_rejected):
    assert_rejected(lambda: event(run_id=""), "run_id", "input_value=''")


def test_unknown_field_is_rejected(assert_rejected):
    assert_rejected(lambda: event(batch_size=32), "batch_size", "input_value=32")


def test_router_prob_sums_of_wrong_length_are_rejected(assert_rejected):
    assert_rejected(lambda: event(router_prob_sums=[0.5, 0.5]), "router_prob_sums has 2 entries", "n_experts=4")


def test_non_finite_router_prob_sums_are_rejected(assert_rejected):
    assert_rejected(lambda: event(router_prob_sums=[0.5, float("inf"), 0, 0]), "router_prob_sums", "inf")


# -- derived fields -------------------------------------------------------------------


def test_active_experts_are_derived_from_the_counts_when_omitted():
    assert event().active_experts == (0, 2, 3)


def test_active_experts_agreeing_with_the_counts_are_accepted():
    assert event(active_experts=[0, 2, 3]).active_experts == (0, 2, 3)


def test_active_experts_disagreeing_with_the_counts_are_rejected(assert_rejected):
    assert_rejected(lambda: event(active_experts=[0, 1]), "active_experts=[0, 1]", "[0, 2, 3]")


def test_token_count_is_derived_as_the_sum_of_the_counts():
    assert event().token_count == 8


def test_token_count_disagreeing_with_the_counts_is_rejected(assert_rejected):
    assert_rejected(lambda: event(token_count=9), "token_count=9", "sum(expert_token_counts)=8")


def test_token_count_and_active_experts_are_in_the_json():
    record = json.loads(event().model_dump_json())
    assert record["token_count"] == 8
    assert record["active_experts"] == [0, 2, 3]
    assert record["expert_token_counts"] == [3, 0, 1, 4]


def test_counts_are_stored_read_only():
    counts = event().expert_token_counts
    assert counts.dtype == np.int64
    with pytest.raises(ValueError):
        counts[0] = 99


def test_later_changes_to_the_callers_array_do_not_reach_the_event():
    source = np.array([3, 0, 1, 4])
    recorded = event(expert_token_counts=source)
    source[0] = 99
    assert recorded.expert_token_counts.tolist() == [3, 0, 1, 4]


def test_to_dict_equals_the_parsed_json():
    recorded = event(loss=2.5, router_prob_sums=[0.25, 0.25, 0.25, 0.25])
    assert recorded.to_dict() == json.loads(recorded.model_dump_json())


# -- from_router_output ---------------------------------------------------------------


@pytest.mark.parametrize(
    "used_capacity",
    [
        torch.tensor([3, 0, 1, 4]),
        torch.tensor([3, 0, 1, 4], dtype=torch.int32),
        torch.tensor([3.0, 0.0, 1.0, 4.0], requires_grad=True),
        np.array([3, 0, 1, 4], dtype=np.int32),
        np.array([3, 0, 1, 4], dtype=np.uint64),
        [3, 0, 1, 4],
    ],
    ids=["torch-int64", "torch-int32", "torch-float-requires-grad", "numpy-int32", "numpy-uint64", "list"],
)
def test_from_router_output_accepts_tensors_arrays_and_lists(used_capacity):
    recorded = RoutingEvent.from_router_output(
        run_id="run", step=7, mode="TRAIN", layer_id=2, used_capacity=used_capacity, n_experts=4, top_k=2
    )
    assert recorded.expert_token_counts.tolist() == [3, 0, 1, 4]
    assert recorded.expert_token_counts.dtype == np.int64
    assert (recorded.token_count, recorded.active_experts) == (8, (0, 2, 3))
    assert (recorded.run_id, recorded.step, recorded.mode, recorded.layer_id) == ("run", 7, "TRAIN", 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_from_router_output_accepts_a_cuda_tensor():
    recorded = RoutingEvent.from_router_output("run", 7, "TRAIN", 2, torch.tensor([3, 0, 1, 4], device="cuda"), 4, 2)
    assert recorded.expert_token_counts.tolist() == [3, 0, 1, 4]


def test_from_router_output_passes_extra_fields_through():
    recorded = RoutingEvent.from_router_output("run", 7, "TRAIN", 2, [3, 0, 1, 4], 4, 2, loss=2.5, aux_loss=0.01)
    assert (recorded.loss, recorded.aux_loss) == (2.5, 0.01)


def test_token_count_counts_dispatched_tokens_not_batch_times_sequence():
    # 4 sequences of 8 tokens, top-2: 64 assignments requested, capacity dropped 9.
    batch, seq_len, top_k = 4, 8, 2
    used_capacity = torch.tensor([16, 16, 12, 11])
    recorded = RoutingEvent.from_router_output("run", 7, "TRAIN", 2, used_capacity, 4, top_k)
    assert recorded.token_count == 55 != batch * seq_len * top_k


def test_from_router_output_validates_like_the_constructor(assert_rejected):
    assert_rejected(
        lambda: RoutingEvent.from_router_output("run", 7, "TRAIN", 2, torch.tensor([3, -1, 1, 4]), 4, 2),
        "expert_token_counts",
        "-1",
    )


# -- JSON round trip -----------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def routing_events(draw) -> RoutingEvent:
    n_experts = draw(st.integers(1, 16))
    optional_sums = st.none() | st.lists(finite, min_size=n_experts, max_size=n_experts)
    return RoutingEvent(
        timestamp=draw(st.floats(0, 4e9)),
        run_id=draw(st.text(min_size=1, max_size=20)),
        step=draw(st.integers(0, 2**62)),
        mode=draw(st.sampled_from(["TRAIN", "INFER"])),
        layer_id=draw(st.integers(0, 10_000)),
        n_experts=n_experts,
        top_k=draw(st.integers(1, n_experts)),
        expert_token_counts=draw(st.lists(st.integers(0, 2**40), min_size=n_experts, max_size=n_experts)),
        router_prob_sums=draw(optional_sums),
        loss=draw(st.none() | finite),
        aux_loss=draw(st.none() | finite),
    )


@settings(max_examples=150)
@given(routing_events())
def test_json_round_trip_is_lossless(recorded):
    restored = RoutingEvent.model_validate_json(recorded.model_dump_json())
    assert restored == recorded
    assert restored.expert_token_counts.dtype == np.int64
    assert restored.model_dump_json() == recorded.model_dump_json()
