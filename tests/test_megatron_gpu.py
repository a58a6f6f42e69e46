"""Megatron-Core on a GPU: ``monitor.attach`` finds a real ``MoELayer``'s experts and counts exactly what
Megatron routed (its router's ``routing_map`` summed over tokens, and the ``tokens_per_expert`` its dispatcher
hands the experts), capacity drops included.

Skipped without CUDA or without megatron-core (Python >= 3.12). One process, one GPU: the NCCL group and
Megatron's model-parallel state are made for a world of 1. Run::

    python -m pytest -m gpu tests/test_megatron_gpu.py -v
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("megatron.core")

from megatron.core import parallel_state  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from chronomoe import Monitor  # noqa: E402

N_EXPERTS, TOP_K, VOCAB, SEQ, BATCH = 8, 2, 128, 64, 4


@pytest.fixture(scope="module")
def megatron_world():
    """torch.distributed (NCCL, world of 1) and Megatron's model-parallel state, torn down afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    model_parallel_cuda_manual_seed(0)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def build(dispatcher: str, capacity_factor: float | None) -> GPTModel:
    config = TransformerConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=128,
        moe_ffn_hidden_size=128,
        num_moe_experts=N_EXPERTS,
        moe_router_topk=TOP_K,
        moe_token_dispatcher_type=dispatcher,
        moe_expert_capacity_factor=capacity_factor,
        moe_token_drop_policy="probs",
        moe_router_load_balancing_type="none",
        add_bias_linear=False,
        use_cpu_initialization=True,
        bf16=False,
        params_dtype=torch.float32,
    )
    spec = get_gpt_layer_local_spec(num_experts=N_EXPERTS, moe_grouped_gemm=False)
    return GPTModel(config, spec, vocab_size=VOCAB, max_sequence_length=SEQ).cuda().train()


def megatron_counts(model: GPTModel):
    """Per layer, what Megatron itself counted in each forward: ``routing_map.sum(0)`` (router output) and the
    ``tokens_per_expert`` handed to the experts; recorded by test hooks on the router and the experts."""
    routed: dict[int, list[np.ndarray]] = {}
    received: dict[int, list[np.ndarray]] = {}
    for index, layer in enumerate(model.decoder.layers):
        moe = layer.mlp
        moe.router.register_forward_hook(
            lambda m, a, out, i=index: routed.setdefault(i, []).append(out[1].sum(0).cpu().numpy())
        )
        moe.experts.register_forward_pre_hook(
            lambda m, args, i=index: received.setdefault(i, []).append(args[1].cpu().numpy())
        )
    return routed, received


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather"])
@pytest.mark.parametrize("capacity_factor", [None, 0.5], ids=["dropless", "capacity-0.5"])
def test_attach_counts_exactly_what_megatron_routed(megatron_world, dispatcher, capacity_factor):
    torch.manual_seed(0)
    model = build(dispatcher, capacity_factor)
    monitor = Monitor(f"megatron-{dispatcher}", lens=None, controller=None)
    attachment = monitor.attach(model)
    assert [
        (layer.layer_id, layer.path, layer.n_experts, layer.top_k, layer.convention) for layer in attachment.layers
    ] == [(i, f"decoder.layers.{i}.mlp.experts", N_EXPERTS, TOP_K, "experts-counts") for i in range(2)]
    routed, received = megatron_counts(model)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), device="cuda")
    positions = torch.arange(SEQ, device="cuda").repeat(BATCH, 1)
    for _ in range(2):  # two microbatches of one step
        model(tokens, positions, attention_mask=None).float().mean().backward()
    monitor.step(1)
    snapshot = monitor.snapshot(1)
    for layer in snapshot.layers:
        assert layer.expert_token_counts.tolist() == np.sum(routed[layer.layer_id], axis=0).tolist()
        assert layer.expert_token_counts.tolist() == np.sum(received[layer.layer_id], axis=0).tolist()
    dispatched = sum(layer.token_count for layer in snapshot.layers)
    if capacity_factor is None:
        assert dispatched == 2 * 2 * BATCH * SEQ * TOP_K
    else:
        assert dispatched < 2 * 2 * BATCH * SEQ * TOP_K
    monitor.close()
