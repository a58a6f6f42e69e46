"""Capture semantics through a real model: checkpointing, gradient accumulation, TRAIN/INFER, torch.compile.

The model is a tiny pure-torch MoE whose experts module follows the
transformers convention (``experts(hidden_states, top_k_index, top_k_weights)``
with ``num_experts``), so ``monitor.attach`` finds it. Expected counts come
from each block's gate (an ``nn.Linear``) through a test hook: top-k of the
gate's logits, counted with ``bincount``, in a pass made before attaching.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch._dynamo.testing
from torch import nn
from torch.utils.checkpoint import checkpoint

from chronomoe import Monitor, load_events, load_snapshots

N_EXPERTS = (8, 4)
TOP_K = 2
VOCAB = 64


class TinyExperts(nn.Module):
    """All experts run densely; each token's output mixes its top-k experts (no host sync)."""

    def __init__(self, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.num_experts = n_experts
        self.weight = nn.Parameter(torch.randn(n_experts, hidden, hidden) * hidden**-0.5)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        gates = hidden_states.new_zeros(hidden_states.shape[0], self.num_experts).scatter(1, top_k_index, top_k_weights)
        expert_out = torch.einsum("th,ehd->ted", hidden_states, self.weight)
        return torch.einsum("te,ted->td", gates, expert_out)


class TinyBlock(nn.Module):
    def __init__(self, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, n_experts, bias=False)
        self.experts = TinyExperts(hidden, n_experts)

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        weights, indices = self.gate(flat).softmax(-1).topk(self.top_k, dim=-1)
        return x + self.experts(flat, indices, weights).reshape(x.shape)


class TinyMoE(nn.Module):
    """Embedding, one MoE block per entry of ``n_experts``, LM head; ``checkpointing`` wraps each block."""

    def __init__(self, n_experts=N_EXPERTS, top_k=TOP_K, hidden=32, checkpointing: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.layers = nn.ModuleList(TinyBlock(hidden, n, top_k) for n in n_experts)
        self.head = nn.Linear(hidden, VOCAB)
        self.checkpointing = checkpointing

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            if self.checkpointing is None:
                x = layer(x)
            else:
                x = checkpoint(layer, x, use_reentrant=self.checkpointing == "reentrant")
        return self.head(x)


def make_model(**options) -> TinyMoE:
    torch.manual_seed(0)
    return TinyMoE(**options)


def batches(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (4, 16), generator=generator) for _ in range(count)]


def expected_counts(model: TinyMoE, ids: torch.Tensor) -> list[np.ndarray]:
    """Per layer, tokens per expert as the gates choose them for ``ids`` (a separate no-grad pass)."""
    logits = []
    handles = [layer.gate.register_forward_hook(lambda _m, _a, out: logits.append(out)) for layer in model.layers]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [
        torch.bincount(layer_logits.topk(TOP_K, dim=-1).indices.reshape(-1), minlength=n).cpu().numpy()
        for layer_logits, n in zip(logits, N_EXPERTS, strict=True)
    ]


def train_step(model: nn.Module, ids: torch.Tensor) -> None:
    model(ids).logsumexp(-1).mean().backward()


def snapshot_counts(monitor: Monitor, step: int) -> list[np.ndarray]:
    return [layer.expert_token_counts for layer in monitor.snapshot(step).layers]


def assert_counts_equal(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [row.tolist() for row in actual] == [row.tolist() for row in expected]


def test_attach_finds_the_tiny_model_layers():
    monitor = Monitor()
    attachment = monitor.attach(make_model())
    assert [(layer.layer_id, layer.path, layer.n_experts, layer.top_k) for layer in attachment.layers] == [
        (0, "layers.0.experts", 8, TOP_K),
        (1, "layers.1.experts", 4, TOP_K),
    ]


def test_counts_of_one_training_step_equal_the_gates_choice():
    model, (ids,) = make_model(), batches(1)
    expected = expected_counts(model, ids)
    monitor = Monitor()
    monitor.attach(model)
    train_step(model, ids)
    monitor.step(0)
    assert_counts_equal(snapshot_counts(monitor, 0), expected)


@pytest.mark.parametrize("checkpointing", ["non_reentrant", "reentrant"])
def test_activation_checkpointing_recompute_is_not_counted_twice(checkpointing):
    plain, (ids,) = make_model(), batches(1)
    expected = expected_counts(plain, ids)
    model = make_model(checkpointing=checkpointing)
    gate_calls = []
    model.layers[0].gate.register_forward_hook(lambda *_: gate_calls.append(1))
    monitor = Monitor()
    monitor.attach(model)
    train_step(model, ids)
    monitor.step(0)
    assert len(gate_calls) == 2, "the backward pass should have re-run the checkpointed block"
    assert_counts_equal(snapshot_counts(monitor, 0), expected)


def test_gradient_accumulation_sums_the_micro_batches_into_the_step(tmp_path):
    model, micro_batches = make_model(), batches(4)
    expected = [expected_counts(model, ids) for ids in micro_batches]
    with Monitor("accumulate", output_dir=tmp_path) as monitor:
        monitor.attach(model)
        for ids in micro_batches[:3]:
            train_step(model, ids)
        monitor.step(1)
        train_step(model, micro_batches[3])
        monitor.step(2)
        window = snapshot_counts(monitor, 2)
    events = load_events(tmp_path / "accumulate")
    per_step = {
        (event.step, event.layer_id): event.expert_token_counts.tolist() for event in events if event.mode == "TRAIN"
    }
    step_1 = [sum(counts[layer] for counts in expected[:3]) for layer in range(len(N_EXPERTS))]
    assert per_step == {
        **{(1, layer): step_1[layer].tolist() for layer in range(len(N_EXPERTS))},
        **{(2, layer): expected[3][layer].tolist() for layer in range(len(N_EXPERTS))},
    }
    assert_counts_equal(window, [step_1[layer] + expected[3][layer] for layer in range(len(N_EXPERTS))])


def test_eval_forwards_are_recorded_as_infer_apart_from_train(tmp_path):
    model, (train_ids, eval_ids) = make_model(), batches(2)
    expected_train, expected_infer = expected_counts(model, train_ids), expected_counts(model, eval_ids)
    with Monitor("modes", output_dir=tmp_path) as monitor:
        monitor.attach(model)
        train_step(model, train_ids)
        model.eval()
        with torch.no_grad():
            model(eval_ids)
        model.train()
        monitor.step(1)
        train_window = snapshot_counts(monitor, 1)
    events = load_events(tmp_path / "modes")
    by_mode = {
        mode: [event.expert_token_counts for event in sorted(events, key=lambda e: e.layer_id) if event.mode == mode]
        for mode in ("TRAIN", "INFER")
    }
    assert_counts_equal(by_mode["TRAIN"], expected_train)
    assert_counts_equal(by_mode["INFER"], expected_infer)
    assert_counts_equal(train_window, expected_train)
    infer_snapshots = [snapshot for snapshot in load_snapshots(tmp_path / "modes") if snapshot.mode == "INFER"]
    assert len(infer_snapshots) == 1
    assert_counts_equal([layer.expert_token_counts for layer in infer_snapshots[0].layers], expected_infer)


@contextmanager
def host_reads_forbidden():
    """Make every way of reading a tensor value on the host raise (what would sync a GPU)."""

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} read a tensor value on the host")

        return fail

    names = ["item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}
    saved_bincount, saved_nonzero = torch.bincount, torch.nonzero
    try:
        for name in names:
            setattr(torch.Tensor, name, forbidden(f"Tensor.{name}"))
        torch.bincount, torch.nonzero = forbidden("torch.bincount"), forbidden("torch.nonzero")
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.bincount, torch.nonzero = saved_bincount, saved_nonzero


def test_recording_a_training_step_reads_no_tensor_value_on_the_host():
    model, (ids,) = make_model(), batches(1)
    expected = expected_counts(model, ids)
    monitor = Monitor()
    monitor.attach(model)
    with host_reads_forbidden():
        train_step(model, ids)
        monitor.step(0)
    assert_counts_equal(snapshot_counts(monitor, 0), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_training_step_with_the_recorder_attached_never_synchronises():
    """CUDA's own sync detector, not a mock: any host-device sync in the step raises.

    The tiny model itself never synchronises (top-k routing, dense experts),
    so the whole step, forward, backward and ``monitor.step``, runs under
    ``set_sync_debug_mode("error")``. The ``.item()`` first proves the
    detector is live.
    """
    model = make_model().cuda()
    ids = batches(1)[0].cuda()
    expected = expected_counts(model, ids)
    monitor = Monitor()
    monitor.attach(model)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            ids.sum().item()
        train_step(model, ids)
        monitor.step(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert_counts_equal(snapshot_counts(monitor, 0), expected)


@pytest.mark.parametrize(
    "compiled",
    ["whole model", "whole model, checkpointed blocks", "checkpoint around compiled blocks"],
)
def test_compiled_model_records_the_same_counts_as_eager(compiled):
    """``aot_eager`` backend (inductor takes ~25 s to compile on a 2-core CPU); ``fullgraph=True``: no graph break.

    The third case is the one a compile-time backward check would get wrong:
    the compiled block itself is re-run by checkpointing inside backward.
    """
    torch._dynamo.reset()
    micro_batches = batches(2)
    eager = make_model(checkpointing=None if compiled == "whole model" else "non_reentrant")
    expected = [sum(counts) for counts in zip(*(expected_counts(eager, ids) for ids in micro_batches), strict=True)]
    backend = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    if compiled == "checkpoint around compiled blocks":
        for layer in eager.layers:
            layer.compile(backend=backend, fullgraph=True)
        model = eager
    else:
        model = torch.compile(eager, backend=backend, fullgraph=True)
    monitor = Monitor()
    monitor.attach(eager)
    for ids in micro_batches:
        train_step(model, ids)
    monitor.step(0)
    assert backend.frame_count >= 1
    assert_counts_equal(snapshot_counts(monitor, 0), expected)
