"""The governance loop on real routers: tiny transformers Mixtral and Qwen3-MoE whose routers favour two experts.

The models are built in the test and frozen (forward passes in training mode,
no optimiser step); the embeddings share a common direction and two router
rows point along it, so every MoE layer sends at least 90% of its
assignments to two experts. The default PressureController, applying through
the router bias actuator with one snapshot per forward, must bring every
layer to nominal within 30 snapshots and keep it there, inside its bounds,
without changing the gating weights of the experts it selects.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from chronomoe import IdentityLens, Monitor, load_manifest  # noqa: E402
from chronomoe.controller import PressureConfig, PressureController  # noqa: E402
from chronomoe.controller.router_bias import INSTALLED_BIAS  # noqa: E402
from chronomoe.io import load_decisions  # noqa: E402

VOCAB, HIDDEN, EXPERTS, TOP_K = 128, 64, 8, 2
FAVOURED = (0, 1)


def tiny_model(family: str) -> torch.nn.Module:
    """A 2-layer MoE of ``family`` whose routers favour experts 0 and 1 (Top2 >= 0.9), frozen, in training mode."""
    torch.manual_seed(0)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "num_experts_per_tok": TOP_K,
    }
    if family == "mixtral":
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(num_local_experts=EXPERTS, **common))
    else:
        config = transformers.Qwen3MoeConfig(
            num_experts=EXPERTS,
            moe_intermediate_size=32,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            **common,
        )
        model = transformers.Qwen3MoeForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    common_direction = torch.ones(HIDDEN) / 8
    with torch.no_grad():
        model.model.embed_tokens.weight += 0.5 * common_direction
        for name, module in model.named_modules():
            if name.endswith("mlp.gate"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.1)
                module.weight[list(FAVOURED)] += 0.3 * common_direction
    model.requires_grad_(False)
    return model.train()


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (16, 64), generator=torch.Generator().manual_seed(1))


def snapshots(model: torch.nn.Module, monitor: Monitor, count: int):
    """One forward and one snapshot per step: the snapshots and the model's outputs."""
    tokens = batch()
    for step in range(1, count + 1):
        logits = model(tokens).logits
        monitor.step(step)
        yield monitor.snapshot(step), logits


FAMILIES = ["mixtral", "qwen3_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_routers_favour_two_experts_in_every_layer(family):
    model = tiny_model(family)
    monitor = Monitor("favour", controller=None, lens=None)
    monitor.attach(model)
    snapshot, _ = next(snapshots(model, monitor, 1))
    assert min(layer.top2_share for layer in snapshot.layers) >= 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_pressure_controller_brings_every_layer_to_nominal_within_30_snapshots_and_keeps_it_there(family):
    model = tiny_model(family)
    controller = PressureController()
    monitor = Monitor("rescue", controller=controller, lens=None)
    monitor.attach(model)
    alerted, nominal_from = False, None
    for snapshot, _ in snapshots(model, monitor, 45):
        all_nominal = all(layer.alert_state == "nominal" for layer in snapshot.layers)
        alerted = alerted or not all_nominal  # the first snapshots are nominal until persistence is reached
        if all_nominal and alerted and nominal_from is None:
            nominal_from = snapshot.step
        if nominal_from is not None:
            assert all_nominal, f"layer left nominal at snapshot {snapshot.step}"
        assert np.abs(monitor.actuator.read()).max() <= PressureConfig().max_bias
    assert alerted and nominal_from is not None and nominal_from <= 30
    assert all(layer.top2_share <= 0.75 for layer in snapshot.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_gating_weights_of_the_chosen_experts_are_the_unbiased_ones(family):
    model = tiny_model(family)
    monitor = Monitor("gates", controller=PressureController(), lens=None)
    monitor.attach(model)
    for _ in snapshots(model, monitor, 8):
        pass
    assert np.abs(monitor.actuator.read()).max() > 0.5  # the bias has moved selection by now
    seen = []
    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(lambda m, args, output: seen.append(output))
    model(batch())
    for logits, weights, indices in seen:
        probabilities = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
        if family == "mixtral":  # Mixtral normalises its top-k weights; this Qwen3-MoE (norm_topk_prob=False) does not
            probabilities = probabilities / probabilities.sum(-1, keepdim=True)
        torch.testing.assert_close(weights.float(), probabilities, rtol=1e-6, atol=1e-7)
        chosen_unbiased = torch.topk(logits.float(), TOP_K, dim=-1).indices
        assert not torch.equal(indices.sort(-1).values, chosen_unbiased.sort(-1).values)  # selection did change


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dry_run_leaves_outputs_bitwise_identical_and_still_records_its_decisions(tmp_path, family):
    plain, governed = tiny_model(family), tiny_model(family)
    buffers_before = dict(governed.state_dict())
    without = Monitor("plain", controller=None, lens=None)
    without.attach(plain)
    dry = Monitor("dry", output_dir=tmp_path, controller=PressureController(dry_run=True), lens=None)
    dry.attach(governed)
    for (_, expected), (_, got) in zip(snapshots(plain, without, 12), snapshots(governed, dry, 12), strict=True):
        assert torch.equal(got, expected)
    dry.close()
    assert governed.state_dict().keys() == buffers_before.keys()
    assert all(torch.equal(governed.state_dict()[k], v) for k, v in buffers_before.items())
    assert not any(hasattr(module, INSTALLED_BIAS) for module in governed.modules())
    decisions = load_decisions(tmp_path / "dry")
    assert len(decisions) == 12 * 2
    adjusted = [d for d in decisions if d.action == "adjust"]
    assert adjusted and all(d.dry_run and not d.applied for d in decisions)
    assert load_manifest(tmp_path / "dry")["monitor_config"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_identity_lens_on_the_router_path_changes_neither_outputs_nor_counts(family):
    with_lens, without_lens = tiny_model(family), tiny_model(family)
    lensed = Monitor("lens", controller=None, lens=IdentityLens())
    lensed.attach(with_lens)
    plain = Monitor("plain", controller=None, lens=None)
    plain.attach(without_lens)
    assert any(module._forward_pre_hooks for name, module in with_lens.named_modules() if name.endswith("mlp.gate"))
    for (snapshot, logits), (expected_snapshot, expected_logits) in zip(
        snapshots(with_lens, lensed, 3), snapshots(without_lens, plain, 3), strict=True
    ):
        assert torch.equal(logits, expected_logits)
        assert [layer.expert_token_counts.tolist() for layer in snapshot.layers] == [
            layer.expert_token_counts.tolist() for layer in expected_snapshot.layers
        ]


def test_detaching_takes_the_installed_bias_and_its_hook_off_the_routers():
    model = tiny_model("mixtral")
    monitor = Monitor("detach", controller=PressureController(), lens=None)
    monitor.attach(model)
    routers = [module for name, module in model.named_modules() if name.endswith("mlp.gate")]
    assert all(hasattr(router, INSTALLED_BIAS) and router._forward_hooks for router in routers)
    assert f"model.layers.0.mlp.gate.{INSTALLED_BIAS}" in model.state_dict()
    monitor.detach()
    assert not any(hasattr(router, INSTALLED_BIAS) or router._forward_hooks for router in routers)


def test_a_family_bias_is_acted_on_in_place_and_restored_on_detach():
    config = transformers.DeepseekV3Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=0,
        n_shared_experts=1,
        max_position_embeddings=128,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).train()
    routers = [module for name, module in model.named_modules() if name.endswith("mlp.gate")]
    with torch.no_grad():
        routers[0].e_score_correction_bias.copy_(torch.linspace(-0.1, 0.1, EXPERTS))
    baseline = routers[0].e_score_correction_bias.clone()
    controller = PressureController(mode="continuous", tolerance=0.0)
    monitor = Monitor("deepseek", controller=controller, lens=None)
    monitor.attach(model)
    assert not any(hasattr(router, INSTALLED_BIAS) or router._forward_hooks for router in routers)
    for _ in snapshots(model, monitor, 2):
        pass
    offsets = monitor.actuator.read()
    assert np.abs(offsets).max() > 0
    torch.testing.assert_close(
        routers[0].e_score_correction_bias, baseline + torch.from_numpy(offsets[0, :EXPERTS]).float()
    )
    monitor.detach()
    assert torch.equal(routers[0].e_score_correction_bias, baseline)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_training_step_with_the_bias_actuator_acting_never_synchronises():
    """CUDA's own sync detector around a whole step (forward with the lens and bias selection hooks, backward,
    ``monitor.step``) and around ``actuator.apply`` of a new bias; the ``.item()`` first proves it is live.

    The toy model dispatches with a fixed capacity (no host sync of its own)."""
    from chronomoe.demo import BALANCED, training_loss
    from chronomoe.toy_model import DemoConfig, DemoMoEModel

    config = DemoConfig(n_layers=2, n_experts=8, top_k=2, capacity_factor=1.25, batch_size=4, seq_len=32)
    torch.manual_seed(0)
    model = DemoMoEModel(config).cuda()
    tokens = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1), device="cuda")
    monitor = Monitor("gpu", controller=PressureController(mode="continuous", tolerance=0.0))
    monitor.attach(model)
    training_loss(model, tokens, BALANCED)[0].backward()
    monitor.step(1)
    monitor.snapshot(1)  # the controller applies a first bias
    assert np.abs(monitor.actuator.read()).max() > 0
    bias = monitor.actuator.read()
    bias[:, :2] += [0.01, -0.01]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            tokens.sum().item()
        training_loss(model, tokens, BALANCED)[0].backward()
        monitor.step(2)
        monitor.actuator.apply(bias, np.ones(2, dtype=bool))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    snapshot = monitor.snapshot(2)
    assert all(layer.token_count == config.batch_size * config.seq_len * config.top_k for layer in snapshot.layers)
