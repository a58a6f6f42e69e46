"""attach(): finding MoE layers, hooking their dispatch, custom extractors, errors, removal.

transformers families are tiny random-initialised configs (no download). The
counts the monitor captures (at the experts call) are checked against the
routing recomputed independently from each router's own logits, caught by a
test hook on the router module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chronomoe import InvalidInputError, Monitor
from chronomoe.capture import LayerSpec, attach

VOCAB = 64
BATCH, SEQ = 2, 8


def bincount(indices: torch.Tensor, n_experts: int) -> np.ndarray:
    return torch.bincount(indices.reshape(-1), minlength=n_experts).numpy()


def top_k_counts(scores: torch.Tensor, top_k: int) -> np.ndarray:
    return bincount(scores.topk(top_k, dim=-1).indices, scores.shape[-1])


# -- transformers families ---------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A tiny config of one transformers MoE family and how to recompute its routing.

    ``expected(router, router_output, top_k)`` gives tokens per expert from the
    router's output: recomputed from its logits without reading the indices it
    returned, except for Switch, whose dispatch mask is summed.
    """

    name: str
    config_class: str
    model_class: str
    options: dict[str, Any]
    expected: Callable[[nn.Module, Any, int], np.ndarray]
    common: dict[str, Any] = field(
        default_factory=lambda: {
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        }
    )
    encoder_decoder: bool = False


def softmax_top_k(router, output, top_k):
    return top_k_counts(output[0], top_k)


def deepseek_top_k(router, output, top_k):
    # n_group = topk_group = 1: no group masking, top-k of sigmoid scores plus the correction bias.
    return top_k_counts(output[0].sigmoid() + router.e_score_correction_bias, top_k)


def switch_dispatch_mask(router, output, top_k):
    # Switch's router returns its dispatch as a one-hot mask with the capacity drops applied, found by
    # role (the integer output over the experts): releases order the outputs differently and compute
    # the mask differently (5.23 drops tokens beyond expert_capacity per sequence; 5.17 drops none),
    # so the router's own mask, summed, is the routing the model chose.
    (mask,) = [tensor for tensor in output if not tensor.is_floating_point() and tensor.shape[-1] == router.num_experts]
    return mask.reshape(-1, router.num_experts).sum(dim=0).numpy()


FAMILIES = [
    Family(
        "mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        {"num_local_experts": 8, "num_experts_per_tok": 2},
        softmax_top_k,
    ),
    Family("olmoe", "OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 8, "num_experts_per_tok": 2}, softmax_top_k),
    Family(
        "qwen2_moe",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
        },
        softmax_top_k,
    ),
    Family(
        "qwen3_moe",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "head_dim": 8},
        softmax_top_k,
    ),
    Family(
        "deepseek_v3",
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "num_hidden_layers": 3,
            "num_key_value_heads": 4,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
        },
        deepseek_top_k,
    ),
    Family(
        "gpt_oss",
        "GptOssConfig",
        "GptOssForCausalLM",
        {"num_local_experts": 8, "num_experts_per_tok": 2, "head_dim": 8, "layer_types": ["full_attention"] * 2},
        softmax_top_k,
    ),
    Family(
        "switch_transformers",
        "SwitchTransformersConfig",
        "SwitchTransformersForConditionalGeneration",
        {
            "num_experts": 4,
            "expert_capacity": 3,
            "num_sparse_encoder_layers": 1,
            "num_sparse_decoder_layers": 1,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
        },
        switch_dispatch_mask,
        common={
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 32,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
        },
        encoder_decoder=True,
    ),
]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def build(transformers, family: Family) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, family.config_class)(**{**family.common, **family.options})
    return getattr(transformers, family.model_class)(config).train()


def run_forward(model: nn.Module, family: Family) -> int:
    """One forward (no grad) on random ids; returns the tokens each MoE layer saw."""
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "decoder_input_ids": ids} if family.encoder_decoder else {"input_ids": ids}
    with torch.no_grad():
        model(**inputs)
    return BATCH * SEQ


def router_of(model: nn.Module, experts_path: str) -> nn.Module:
    """The router beside an experts module (``...mlp.gate`` or ``...mlp.router``)."""
    parent = experts_path.rpartition(".")[0]
    named = dict(model.named_modules())
    return next(named[f"{parent}.{name}"] for name in ("gate", "router") if f"{parent}.{name}" in named)


@pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])
def test_captured_counts_equal_the_routing_the_model_chose(transformers, family):
    model = build(transformers, family)
    monitor = Monitor(run_id=family.name)
    attachment = monitor.attach(model)
    router_outputs: dict[int, Any] = {}
    for layer in attachment.layers:
        router_of(model, layer.path).register_forward_hook(
            lambda _module, _args, output, layer_id=layer.layer_id: router_outputs.__setitem__(layer_id, output)
        )
    tokens = run_forward(model, family)
    monitor.step(0)
    snapshot = monitor.snapshot(0)

    assert len(attachment.layers) == 2
    for layer in attachment.layers:
        expected = family.expected(router_of(model, layer.path), router_outputs[layer.layer_id], layer.top_k)
        assert np.count_nonzero(expected) > layer.top_k, "degenerate routing would make the check weak"
        assert snapshot.layer(layer.layer_id).expert_token_counts.tolist() == expected.tolist()
        if not family.encoder_decoder:
            assert expected.sum() == tokens * layer.top_k


def test_layer_ids_are_the_decoder_layer_indices(transformers):
    deepseek = next(family for family in FAMILIES if family.name == "deepseek_v3")
    attachment = Monitor().attach(build(transformers, deepseek))
    assert [(layer.layer_id, layer.path) for layer in attachment.layers] == [
        (1, "model.layers.1.mlp.experts"),
        (2, "model.layers.2.mlp.experts"),
    ]


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3"])
def test_shared_experts_are_not_counted_as_routed(transformers, name):
    family = next(family for family in FAMILIES if family.name == name)
    model = build(transformers, family)
    monitor = Monitor()
    attachment = monitor.attach(model)
    tokens = run_forward(model, family)
    monitor.step(0)
    assert all("shared" not in layer.path and layer.n_experts == 8 for layer in attachment.layers)
    assert [layer.token_count for layer in monitor.snapshot(0).layers] == [tokens * 2] * 2


def test_convention_and_expert_count_are_read_from_the_module(transformers):
    gpt_oss = next(family for family in FAMILIES if family.name == "gpt_oss")
    attachment = Monitor().attach(build(transformers, gpt_oss))
    assert {(layer.n_experts, layer.top_k, layer.convention) for layer in attachment.layers} == {
        (8, 2, "experts-call:router_indices")
    }


# -- nanoMoE-style routers -----------------------------------------------------------------
class Router(nn.Module):
    """nanoMoE's router contract: ``n_exp``, ``top_k``; returns ``(used_capacity, dispatch_mask)``.

    Top-k choices claim expert slots in order (all first choices, then all
    second ones); an expert keeps at most ``capacity`` of them.
    """

    def __init__(self, hidden: int, n_exp: int, top_k: int, capacity_factor: float) -> None:
        super().__init__()
        self.n_exp, self.top_k, self.capacity_factor = n_exp, top_k, capacity_factor
        self.w_g = nn.Linear(hidden, n_exp, bias=False)

    def capacity(self, num_tokens: int) -> int:
        return int(self.top_k * self.capacity_factor * num_tokens / self.n_exp)

    def forward(self, x):
        num_tokens = x.shape[0] * x.shape[1]
        top_k_indices = self.w_g(x).topk(self.top_k, dim=-1).indices
        mask = F.one_hot(top_k_indices, self.n_exp).reshape(num_tokens, self.top_k, self.n_exp).permute(1, 0, 2)
        rank = mask.reshape(-1, self.n_exp).cumsum(dim=0).reshape(mask.shape) - 1
        mask = mask * (rank < self.capacity(num_tokens))
        used_capacity = mask.sum(dim=(0, 1))  # [n_exp]
        return used_capacity, mask


class NanoMoELayer(nn.Module):
    def __init__(self, hidden: int, n_exp: int, top_k: int, capacity_factor: float) -> None:
        super().__init__()
        self.router = Router(hidden, n_exp, top_k, capacity_factor)
        self.experts = nn.Parameter(torch.randn(n_exp, hidden, hidden) * hidden**-0.5)

    def forward(self, x):
        _, mask = self.router(x)
        dispatch = mask.sum(dim=0).to(x.dtype)  # [tokens, n_exp]
        flat = x.reshape(-1, x.shape[-1])
        out = torch.einsum("te,th,ehd->td", dispatch, flat, self.experts)
        return x + out.reshape(x.shape)


class NanoMoE(nn.Module):
    def __init__(self, n_layers=2, hidden=16, n_exp=4, top_k=2, capacity_factor=0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.h = nn.ModuleList(NanoMoELayer(hidden, n_exp, top_k, capacity_factor) for _ in range(n_layers))

    def forward(self, x):
        for block in self.h:
            x = block(x)
        return x


def nano_inputs() -> torch.Tensor:
    return torch.randn(BATCH, SEQ, 16, generator=torch.Generator().manual_seed(2))


def test_nanomoe_router_records_used_capacity_after_drops():
    model = NanoMoE()
    logits: dict[int, torch.Tensor] = {}
    for index, block in enumerate(model.h):
        block.router.w_g.register_forward_hook(lambda _m, _a, out, index=index: logits.__setitem__(index, out))
    monitor = Monitor()
    attachment = monitor.attach(model)
    model(nano_inputs())
    monitor.step(0)
    snapshot = monitor.snapshot(0)

    assert [(layer.layer_id, layer.path, layer.convention) for layer in attachment.layers] == [
        (0, "h.0.router", "nanomoe-used-capacity"),
        (1, "h.1.router", "nanomoe-used-capacity"),
    ]
    capacity = model.h[0].router.capacity(BATCH * SEQ)
    for index in (0, 1):
        expected = np.minimum(top_k_counts(logits[index], 2), capacity)
        assert expected.sum() < BATCH * SEQ * 2, "capacity should drop some tokens"
        assert snapshot.layer(index).expert_token_counts.tolist() == expected.tolist()


def test_nanomoe_router_with_another_output_raises_naming_the_module():
    model = NanoMoE()
    model.h[1].router.forward = lambda x: (torch.zeros(3, dtype=torch.int64), None)
    Monitor().attach(model)
    with pytest.raises(InvalidInputError, match=r"h\.1\.router.*extractor="):
        model(nano_inputs())


# -- custom models ------------------------------------------------------------------------------
class Dispatcher(nn.Module):
    """A custom MoE layer that follows no built-in convention: returns ``(output, expert_ids)``."""

    def __init__(self, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, n_experts)
        self.experts = nn.Parameter(torch.randn(n_experts, hidden, hidden) * hidden**-0.5)

    def forward(self, x):
        expert_ids = self.score(x).argmax(dim=-1)  # [batch, seq], top-1
        return x + torch.einsum("bsh,bshd->bsd", x, self.experts[expert_ids]), expert_ids


class CustomMoE(nn.Module):
    def __init__(self, n_layers=2, hidden=16, n_experts=6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Dispatcher(hidden, n_experts) for _ in range(n_layers))

    def forward(self, x):
        routes = []
        for block in self.blocks:
            x, expert_ids = block(x)
            routes.append(expert_ids)
        return x, routes


def test_custom_extractor_records_the_indices_it_returns():
    model, monitor = CustomMoE(), Monitor()
    attachment = monitor.attach(
        model,
        modules={"blocks.0": 6, "blocks.1": 6},
        extractor=lambda module, args, kwargs, output: {"indices": output[1]},
    )
    _, routes = model(nano_inputs())
    monitor.step(0)
    snapshot = monitor.snapshot(0)
    assert [(layer.layer_id, layer.convention) for layer in attachment.layers] == [(0, "extractor"), (1, "extractor")]
    assert [layer.expert_token_counts.tolist() for layer in snapshot.layers] == [
        bincount(route, 6).tolist() for route in routes
    ]


def test_custom_extractor_can_return_counts_under_chosen_layer_ids():
    model, monitor = CustomMoE(), Monitor()
    monitor.attach(
        model,
        modules=[LayerSpec("blocks.0", 6, layer_id=10), LayerSpec("blocks.1", 6, layer_id=20)],
        extractor=lambda module, args, kwargs, output: {"counts": F.one_hot(output[1], 6).sum(dim=(0, 1))},
    )
    _, routes = model(nano_inputs())
    monitor.step(0)
    snapshot = monitor.snapshot(0)
    assert [layer.layer_id for layer in snapshot.layers] == [10, 20]
    assert [layer.expert_token_counts.tolist() for layer in snapshot.layers] == [
        bincount(route, 6).tolist() for route in routes
    ]


def test_extractor_returning_something_else_raises_naming_the_module():
    model = CustomMoE()
    Monitor().attach(
        model, modules={"blocks.0": 6, "blocks.1": 6}, extractor=lambda module, args, kwargs, output: output[1]
    )
    with pytest.raises(InvalidInputError, match=r"extractor\(blocks\.0\)"):
        model(nano_inputs())


def test_extractor_without_modules_is_rejected():
    with pytest.raises(InvalidInputError, match="modules"):
        Monitor().attach(CustomMoE(), extractor=lambda *_: None)


def test_module_without_a_convention_needs_an_extractor():
    with pytest.raises(InvalidInputError, match=r"blocks\.0.*extractor="):
        Monitor().attach(CustomMoE(), modules={"blocks.0": 6})


def test_unknown_module_path_is_rejected():
    with pytest.raises(InvalidInputError, match=r"blocks\.7"):
        Monitor().attach(CustomMoE(), modules={"blocks.7": 6}, extractor=lambda *_: None)


def test_model_without_moe_layer_raises_listing_what_was_looked_for():
    dense = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    monitor = Monitor()
    with pytest.raises(InvalidInputError) as raised:
        monitor.attach(dense)
    message = str(raised.value)
    assert "no MoE layer found" in message and "Sequential" in message
    looked_for = [
        "top_k_index",
        "router_indices",
        "selected_experts",
        "num_experts",
        "n_exp",
        "used_capacity",
        "extractor",
    ]
    assert [item for item in looked_for if item not in message] == []
    assert monitor.capture is None


# -- removal -----------------------------------------------------------------------------------
def test_remove_takes_every_hook_off_and_reattaching_works():
    model, monitor = NanoMoE(), Monitor()
    routers = [block.router for block in model.h]
    first = monitor.attach(model)
    model(nano_inputs())
    monitor.step(0)
    recorded = [layer.token_count for layer in monitor.snapshot(0).layers]

    monitor.detach()
    assert all(not router._forward_hooks and not router._forward_pre_hooks for router in routers)
    model(nano_inputs())
    monitor.step(1)
    assert [layer.token_count for layer in monitor.snapshot(1).layers] == [0, 0]

    second = attach(model, monitor.record)
    model(nano_inputs())
    monitor.step(2)
    assert [layer.token_count for layer in monitor.snapshot(2).layers] == recorded
    assert second.layers == first.layers
    second.remove()
    second.remove()
    assert all(not router._forward_hooks for router in routers)
