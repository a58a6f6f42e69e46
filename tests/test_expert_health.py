"""Expert health: per-expert weight and gradient norms at snapshot cadence, and the silent-expert signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from chronomoe import Monitor
from chronomoe.capture.expert_norms import ExpertHealthTracker
from chronomoe.expert_health import EXPERT_HEALTH_FILE, ExpertHealthConfig, ExpertHealthRecord, silent_experts

N_EXPERTS, TOP_K, HIDDEN, VOCAB = 8, 2, 16, 32
SILENCED = 3  # the expert of layer 0 whose gradient a hook removes: it still receives tokens


class Experts(nn.Module):
    """transformers-convention experts with stacked per-expert weights ``[E, H, H]``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_experts = N_EXPERTS
        self.weight = nn.Parameter(torch.randn(N_EXPERTS, HIDDEN, HIDDEN) * HIDDEN**-0.5)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        gates = hidden_states.new_zeros(hidden_states.shape[0], N_EXPERTS).scatter(1, top_k_index, top_k_weights)
        return torch.einsum("te,ted->td", gates, torch.einsum("th,ehd->ted", hidden_states, self.weight))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(HIDDEN, N_EXPERTS, bias=False)
        self.experts = Experts()

    def forward(self, x):
        weights, indices = self.gate(x).softmax(-1).topk(TOP_K, dim=-1)
        return x + self.experts(x, indices, weights)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids):
        hidden = self.embed(ids)
        for block in self.layers:
            hidden = block(hidden)
        return self.head(hidden)


def silence(model: Model) -> None:
    """Expert SILENCED of layer 0 learns nothing: a gradient hook zeroes its rows."""
    mask = torch.ones(N_EXPERTS, 1, 1)
    mask[SILENCED] = 0
    model.layers[0].experts.weight.register_hook(lambda grad: grad * mask)


def run(steps: int = 4, snapshot_every: int = 2):
    """Train with a monitor and a tracker; returns the records and, per window, the gradients seen at each step."""
    torch.manual_seed(0)
    model = Model()
    silence(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gradients = []  # the experts' gradients at each optimizer step, read by the test before the tracker's hook
    optimizer.register_step_pre_hook(
        lambda *args: gradients.append([block.experts.weight.grad.clone() for block in model.layers])
    )
    monitor = Monitor("health", lens=None, controller=None)
    tracker = ExpertHealthTracker(model, monitor.attach(model).layers)
    tracker.hook_optimizer(optimizer)
    records = []
    monitor.bus.subscribe("expert_health", records.append)
    tracker.follow(monitor)
    for step in range(1, steps + 1):
        ids = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(step))
        nn.functional.cross_entropy(model(ids), ids).backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step(step)
        if step % snapshot_every == 0:
            monitor.snapshot(step)
    return model, records, gradients


def test_an_expert_that_receives_tokens_but_gets_no_gradient_is_silent_and_no_other_is():
    _, records, _ = run()
    assert [record.silent for record in records] == [{0: [SILENCED]}, {0: [SILENCED]}]
    assert records[-1].layers[0].token_counts[SILENCED] > 0


def test_gradient_norms_are_the_root_mean_square_over_the_windows_optimizer_steps():
    _, records, gradients = run()
    for window, record in enumerate(records):
        for position, layer in enumerate(record.layers):
            steps = [gradients[2 * window + i][position] for i in range(2)]
            expected = np.sqrt(np.mean([(g.flatten(1).norm(dim=1) ** 2).numpy() for g in steps], axis=0))
            assert layer.grad_steps == 2
            np.testing.assert_allclose(layer.grad_norm, expected, rtol=1e-5)


def test_weight_norms_are_each_experts_norm_at_the_snapshot():
    model, records, _ = run()
    for block, layer in zip(model.layers, records[-1].layers, strict=True):
        expected = block.experts.weight.detach().flatten(1).norm(dim=1).numpy()
        np.testing.assert_allclose(layer.weight_norm, expected, rtol=1e-5)


def test_token_counts_are_the_snapshots():
    monitor_counts = []
    _, records, _ = run()
    for record in records:
        monitor_counts.append([sum(layer.token_counts) for layer in record.layers])
    assert monitor_counts == [[2 * 64 * TOP_K] * 2] * 2


def test_records_are_written_to_the_run_folder_one_line_per_train_snapshot(tmp_path):
    torch.manual_seed(0)
    model = Model()
    monitor = Monitor("written", output_dir=tmp_path, lens=None, controller=None)
    tracker = ExpertHealthTracker(model, monitor.attach(model).layers)
    tracker.follow(monitor)
    for step in (1, 2):
        model(torch.randint(0, VOCAB, (8,)))
        monitor.step(step)
        monitor.snapshot(step)
    monitor.close()
    lines = (tmp_path / "written" / EXPERT_HEALTH_FILE).read_text().splitlines()
    records = [ExpertHealthRecord.model_validate_json(line) for line in lines]
    assert [record.step for record in records] == [1, 2]
    assert all(layer.grad_norm is None and layer.grad_steps == 0 for layer in records[0].layers)


def test_accumulating_gradients_reads_no_tensor_value_on_the_host(monkeypatch):
    torch.manual_seed(0)
    model = Model()
    monitor = Monitor("sync", lens=None, controller=None)
    tracker = ExpertHealthTracker(model, monitor.attach(model).layers)
    nn.functional.cross_entropy(model(torch.arange(8)), torch.arange(8)).backward()
    for method in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):

        def refuse(*args, _method=method, **kwargs):
            raise AssertionError(f"host read: Tensor.{_method}")

        monkeypatch.setattr(torch.Tensor, method, refuse)
    tracker.accumulate_gradients()
    monkeypatch.undo()
    assert tracker.measure("sync", 1, {}).layers[0].grad_steps == 1


def test_removing_the_tracker_removes_its_optimizer_hook_and_subscription():
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor("remove", lens=None, controller=None)
    tracker = ExpertHealthTracker(model, monitor.attach(model).layers)
    tracker.hook_optimizer(optimizer)
    tracker.follow(monitor)
    tracker.remove()
    assert not optimizer._optimizer_step_pre_hooks
    assert monitor.bus.subscribers("snapshot") == []


def test_experts_held_as_a_list_of_modules_or_as_numbered_weights_are_found():
    class ListExperts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_local_experts = 4
            self.local_experts = nn.ModuleList([nn.Linear(HIDDEN, HIDDEN) for _ in range(4)])

        def forward(self, hidden, top_k_index, weights):
            return hidden

    class NumberedExperts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_experts = 4
            for expert in range(4):
                self.register_parameter(f"weight{expert}", nn.Parameter(torch.full((2, 2), float(expert))))

        def forward(self, hidden, top_k_index, weights):
            return hidden

    model = nn.ModuleDict({"0": ListExperts(), "1": NumberedExperts()})
    tracker = ExpertHealthTracker(model, Monitor("found", lens=None).attach(model).layers)
    record = tracker.measure("found", 0, {})
    with torch.no_grad():
        expected = [torch.cat([p.flatten() for p in model["0"].local_experts[e].parameters()]).norm() for e in range(4)]
    np.testing.assert_allclose(record.layers[0].weight_norm, [float(v) for v in expected], rtol=1e-5)
    assert record.layers[1].weight_norm == [0.0, 2.0, 4.0, 6.0]


def test_a_frozen_expert_in_a_list_of_experts_has_a_zero_gradient_norm_and_is_silent():
    class ListExperts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_local_experts = 4
            self.local_experts = nn.ModuleList([nn.Linear(HIDDEN, HIDDEN) for _ in range(4)])

        def forward(self, hidden, top_k_index, weights):
            outputs = torch.stack([expert(hidden) for expert in self.local_experts], dim=1)
            return (outputs.gather(1, top_k_index[..., None].expand(-1, -1, HIDDEN)) * weights[..., None]).sum(1)

    torch.manual_seed(0)
    model = nn.ModuleDict({"0": ListExperts()})
    model["0"].local_experts[1].requires_grad_(False)
    tracker = ExpertHealthTracker(model, Monitor("frozen", lens=None).attach(model).layers)
    hidden = torch.randn(64, HIDDEN)
    model["0"](hidden, torch.arange(64)[:, None] % 4, torch.ones(64, 1)).square().sum().backward()
    tracker.accumulate_gradients()
    (layer,) = tracker.measure("frozen", 1, {0: np.full(4, 16)}).layers
    assert layer.grad_norm[1] == 0.0 and all(norm > 0 for norm in layer.grad_norm[:1] + layer.grad_norm[2:])
    assert layer.silent_experts == [1]


@pytest.mark.parametrize(
    ("counts", "grads", "silent"),
    [
        ([100, 100, 100, 100], [1.0, 1.0, 0.001, 1.0], [2]),
        ([100, 100, 100, 0], [1.0, 1.0, 1.0, 0.0], []),  # a dead expert is the balance metrics' to report
        ([100, 100, 100, 1], [1.0, 1.0, 1.0, 0.0], []),  # under-used: below min_token_share of the uniform share
        ([100, 100, 100, 100], [1.0, 1.0, 0.5, 1.0], []),  # smaller, not silent
        ([100, 100, 100, 100], [1.0, float("nan"), 0.0, 1.0], [2]),  # NaN is reported apart, not a peer
        ([100, 100, 0, 0], [0.0, 1.0, 0.0, 0.0], [0]),
        ([100, 0, 0, 0], [0.0, 0.0, 0.0, 0.0], []),  # no peer to compare with
        ([0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0], []),
    ],
)
def test_the_silent_signal_on_one_layer(counts, grads, silent):
    assert silent_experts(counts, grads, ExpertHealthConfig()) == silent
