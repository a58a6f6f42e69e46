"""torchtitan: attach finds its routers with no user code, and the metrics processor runs the monitor at the
trainer's cadence. Counts are checked against torchtitan's own ``tokens_per_expert_E`` buffer.

The small training model stacks torchtitan's own ``MoE`` layers (router, grouped experts, local dispatcher,
the load-balancing optimizer pre-hook) between an embedding and a head: torchtitan's FlexAttention has no
CPU backward, so its DeepSeek-V3 debug model is run forward only.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from chronomoe import Monitor, load_events, load_snapshots

pytest.importorskip("torchtitan")
import torchtitan.components.metrics as torchtitan_metrics
from torchtitan.components.metrics import DeviceMemStats
from torchtitan.components.optimizer import default_adamw
from torchtitan.components.optimizer.optimizer import register_moe_load_balancing_hook
from torchtitan.models.common.config_utils import (
    make_moe_config,
    make_router_config,
    make_token_dispatcher_config,
)
from torchtitan.models.common.moe import GroupedExperts, RoutedExperts
from torchtitan.observability import structured_logger

from chronomoe.expert_health import EXPERT_HEALTH_FILE, ExpertHealthRecord
from chronomoe.integrations.torchtitan import ChronoMoEMetricsProcessor

VOCAB, DIM, N_EXPERTS, TOP_K = 64, 32, 8, 2
# What the load-balancing hook and the metrics processor read of torchtitan's ParallelDims (a real one needs
# torch.distributed).
ONE_RANK = SimpleNamespace(get_optional_mesh=lambda name: None, ep_enabled=False, tp=1, non_data_parallel_size=1)


class Block(nn.Module):
    """A transformer block as torchtitan's hooks see one: ``moe_enabled`` and ``moe``."""

    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.moe_enabled = True
        self.checkpointed = checkpointed
        self.moe = make_moe_config(
            num_experts=N_EXPERTS,
            router=make_router_config(
                dim=DIM, num_experts=N_EXPERTS, gate_param_init={}, top_k=TOP_K, score_func="softmax"
            ),
            routed_experts=RoutedExperts.Config(
                inner_experts=GroupedExperts.Config(dim=DIM, hidden_dim=64, num_experts=N_EXPERTS),
                token_dispatcher=make_token_dispatcher_config(
                    num_experts=N_EXPERTS, top_k=TOP_K, comm_backend="standard"
                ),
            ),
        ).build()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed:
            return x + checkpoint(self.moe, x, use_reentrant=False)
        return x + self.moe(x)


class TinyTitan(nn.Module):
    """Embedding, two torchtitan MoE blocks in ``layers`` (a ModuleDict, as torchtitan's decoders), a head."""

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({"0": Block(checkpointed), "1": Block(checkpointed)})
        self.head = nn.Linear(DIM, VOCAB)
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        for block in self.layers.values():
            hidden = block(hidden)
        return self.head(hidden)


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(step))


def buffers(model: TinyTitan) -> np.ndarray:
    """torchtitan's ``tokens_per_expert_E`` of each layer, ``[2, E]``."""
    return np.stack([block.moe.tokens_per_expert_E.numpy().copy() for block in model.layers.values()])


def test_attach_finds_the_routers_of_torchtitans_deepseek_v3_debug_model_and_counts_what_torchtitan_counts():
    from torchtitan.models.deepseek_v3 import model_registry

    torch.manual_seed(0)
    model = model_registry("debugmodel").model.build()
    model.init_states(buffer_device=torch.device("cpu"))
    model.train()
    monitor = Monitor("dsv3", lens=None, controller=None)
    attachment = monitor.attach(model)
    assert [
        (layer.layer_id, layer.path, layer.n_experts, layer.top_k, layer.convention) for layer in attachment.layers
    ] == [(i, f"layers.{i}.moe.router", 8, 3, "torchtitan-router") for i in range(1, 6)]
    positions = torch.arange(32).repeat(2, 1)
    with torch.no_grad():
        model(torch.randint(0, 2048, (2, 32)), positions, model.get_attention_masks(positions))
    monitor.step(1)
    snapshot = monitor.snapshot(1)
    named = dict(model.named_modules())
    for layer in snapshot.layers:
        assert layer.expert_token_counts.tolist() == named[f"layers.{layer.layer_id}.moe"].tokens_per_expert_E.tolist()
    assert sum(layer.token_count for layer in snapshot.layers) == 5 * 2 * 32 * 3


def test_under_activation_checkpointing_each_token_counts_once_where_torchtitans_buffer_counts_it_twice():
    torch.manual_seed(0)
    model = TinyTitan(checkpointed=True).train()
    monitor = Monitor("ac", lens=None, controller=None)
    monitor.attach(model)
    logits = model(batch(1))
    nn.functional.cross_entropy(logits.flatten(0, 1), batch(1).flatten()).backward()
    monitor.step(1)
    counts = np.stack([layer.expert_token_counts for layer in monitor.snapshot(1).layers])
    assert (buffers(model) == 2 * counts).all()
    assert counts.sum() == 2 * 2 * 16 * TOP_K


class HostMemory:
    """Stands in for torchtitan's ``DeviceMemoryMonitor``, which needs a GPU: the memory figures it logs."""

    device_name = "cpu"

    def get_peak_stats(self):
        return DeviceMemStats(0.0, 0.0, 0.0, 0.0, 0, 0)

    def reset_peak_stats(self):
        pass


@pytest.fixture(autouse=True)
def host_memory(monkeypatch):
    monkeypatch.setattr(torchtitan_metrics, "build_device_memory_monitor", HostMemory)


def train(tmp_path, steps: int, log_freq: int, expert_health: bool = False):
    """The trainer's calls, in its order: build the processor, hand it the optimizers then the model parts,
    then per step set the step, count the batch's tokens, forward, backward, optimizer step, and log when
    ``should_log``."""
    torch.manual_seed(0)
    model = TinyTitan().train()
    processor = ChronoMoEMetricsProcessor.Config(log_freq=log_freq, run_id="titan", expert_health=expert_health).build(
        parallel_dims=ONE_RANK, dump_folder=str(tmp_path)
    )
    processor.num_flops_per_token = 1
    optimizers = default_adamw(lr=1e-2).build(model_parts=[model])
    per_step = []  # torchtitan's buffer at each optimizer step, before its balancing hook zeroes it
    optimizers.register_step_pre_hook(lambda *args, **kwargs: per_step.append(buffers(model)))
    register_moe_load_balancing_hook(optimizers, [model], ONE_RANK)
    processor.optimizers = optimizers
    processor.model_parts = [model]
    logged = {}
    processor.logger = SimpleNamespace(log=lambda metrics, step: logged.__setitem__(step, metrics), close=lambda: None)
    for step in range(1, steps + 1):
        structured_logger.set_step(step)
        processor.ntokens_since_last_log += batch(step).numel()
        processor.data_loading_times.append(0.0)
        optimizers.zero_grad()
        loss = nn.functional.cross_entropy(model(batch(step)).flatten(0, 1), batch(step).flatten())
        loss.backward()
        optimizers.step()
        if processor.should_log(step):
            processor.log(step, float(loss), float(loss), 1.0)
    processor.close()
    return processor, per_step, logged


def test_the_metrics_processor_records_every_step_exactly_as_torchtitans_buffer_and_snapshots_when_it_logs(tmp_path):
    _, per_step, logged = train(tmp_path, steps=6, log_freq=3)
    run_dir = tmp_path / "chronomoe" / "titan"
    events = load_events(run_dir)
    assert sorted({event.step for event in events}) == [1, 2, 3, 4, 5, 6]
    for event in events:
        assert event.expert_token_counts.tolist() == per_step[event.step - 1][event.layer_id].tolist()
    assert [snapshot.step for snapshot in load_snapshots(run_dir)] == [1, 3, 6]
    assert sorted(logged) == [1, 3, 6]


def test_the_metrics_processor_adds_each_layers_metrics_to_what_the_trainer_logs(tmp_path):
    _, _, logged = train(tmp_path, steps=3, log_freq=3)
    last = load_snapshots(tmp_path / "chronomoe" / "titan")[-1]
    for layer in last.layers:
        assert logged[3][f"chronomoe/layer_{layer.layer_id}/n_effective"] == layer.n_effective
        assert logged[3][f"chronomoe/layer_{layer.layer_id}/top2_share"] == layer.top2_share
        assert logged[3][f"chronomoe/alert_level/layer_{layer.layer_id}"] == 0.0
    assert logged[3]["loss_metrics/global_avg_loss"] == last.train_loss


def test_the_metrics_processor_with_expert_health_writes_one_record_per_snapshot(tmp_path):
    train(tmp_path, steps=3, log_freq=3, expert_health=True)
    lines = (tmp_path / "chronomoe" / "titan" / EXPERT_HEALTH_FILE).read_text().splitlines()
    records = [ExpertHealthRecord.model_validate_json(line) for line in lines]
    assert [record.step for record in records] == [1, 3]
    assert [layer.grad_steps for layer in records[1].layers] == [2, 2]
    assert all(norm is not None and norm > 0 for layer in records[1].layers for norm in layer.grad_norm or [None])


def test_closing_the_metrics_processor_removes_every_hook(tmp_path):
    processor, _, _ = train(tmp_path, steps=1, log_freq=1, expert_health=True)
    model = processor.model_parts[0]
    assert all(not module._forward_hooks for module in model.modules())
    assert processor.health is not None and processor.health._subscription is None
