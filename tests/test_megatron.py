"""Megatron: attach on a stand-in of Megatron-Core's MoE layer, and ``chronomoe import megatron`` on generated dumps.

megatron-core needs Python >= 3.12 and a GPU for its MoE layer; the real layer is tested in
``tests/test_megatron_gpu.py``. The stand-in keeps what detection reads: the MoE layer's
``local_expert_indices`` and ``config.num_moe_experts`` / ``moe_router_topk``, a router returning
``(probs, routing_map)``, and experts called as ``experts(permuted_hidden, tokens_per_expert, permuted_probs)``.
Counts are checked against Megatron's own: ``routing_map.sum(0)``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from chronomoe import InvalidInputError, Monitor, load_events, load_snapshots
from chronomoe.cli import main
from chronomoe.importers.megatron import COPY, MALFORMED, REPEATED, TORN, WIDTH, MegatronLayout, import_megatron

E, TOP_K, HIDDEN = 8, 2, 16


class SequentialMLP(nn.Module):
    """Megatron's experts call: ``(permuted_local_hidden_states, tokens_per_expert, permuted_probs)``."""

    def __init__(self, num_local_experts: int) -> None:
        super().__init__()
        self.num_local_experts = num_local_experts
        self.local_experts = nn.ModuleList([nn.Linear(HIDDEN, HIDDEN) for _ in range(num_local_experts)])

    def forward(self, permuted_local_hidden_states, tokens_per_expert, permuted_probs):
        return permuted_local_hidden_states * permuted_probs[:, None], None


class MoELayer(nn.Module):
    """One rank of an expert-parallel group of ``ep_size`` ranks: routes to all E experts, runs its local ones."""

    def __init__(self, ep_rank: int = 0, ep_size: int = 1) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_moe_experts=E, moe_router_topk=TOP_K)
        self.num_local_experts = E // ep_size
        self.local_expert_indices = [ep_rank * self.num_local_experts + i for i in range(self.num_local_experts)]
        self.router = nn.Linear(HIDDEN, E, bias=False)
        self.experts = SequentialMLP(self.num_local_experts)
        self.routing_maps: list[torch.Tensor] = []

    def forward(self, hidden):
        top = self.router(hidden).topk(TOP_K, dim=-1).indices
        routing_map = torch.zeros(hidden.shape[0], E, dtype=torch.bool).scatter(1, top, True)
        self.routing_maps.append(routing_map)
        local = routing_map[:, self.local_expert_indices]
        tokens_per_expert = local.sum(0)  # what the dispatcher hands the experts (one rank: no all-to-all)
        rows = local.T.nonzero()
        permuted = hidden[rows[:, 1]]
        self.experts(permuted, tokens_per_expert, torch.ones(rows.shape[0]))
        return hidden


class GPTModel(nn.Module):
    def __init__(self, ep_rank: int = 0, ep_size: int = 1) -> None:
        super().__init__()
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([nn.Module() for _ in range(2)])
        for layer in self.decoder.layers:
            layer.mlp = MoELayer(ep_rank, ep_size)

    def forward(self, hidden):
        for layer in self.decoder.layers:
            hidden = layer.mlp(hidden)
        return hidden


def test_attach_finds_megatrons_experts_and_counts_its_routing_map():
    torch.manual_seed(0)
    model = GPTModel()
    monitor = Monitor("mcore", lens=None, controller=None)
    attachment = monitor.attach(model)
    assert [
        (layer.layer_id, layer.path, layer.n_experts, layer.top_k, layer.convention) for layer in attachment.layers
    ] == [
        (0, "decoder.layers.0.mlp.experts", E, TOP_K, "experts-counts"),
        (1, "decoder.layers.1.mlp.experts", E, TOP_K, "experts-counts"),
    ]
    model(torch.randn(32, HIDDEN))
    model(torch.randn(16, HIDDEN))  # a second microbatch of the step
    monitor.step(1)
    for layer, block in zip(monitor.snapshot(1).layers, model.decoder.layers, strict=True):
        assert layer.expert_token_counts.tolist() == sum(m.sum(0) for m in block.mlp.routing_maps).tolist()


def test_an_expert_parallel_ranks_local_experts_are_counted_at_their_global_ids():
    torch.manual_seed(0)
    model = GPTModel(ep_rank=1, ep_size=2)
    monitor = Monitor("ep", lens=None, controller=None)
    assert {layer.n_experts for layer in monitor.attach(model).layers} == {E}
    model(torch.randn(32, HIDDEN))
    monitor.step(1)
    counts = monitor.snapshot(1).layers[0].expert_token_counts
    routing_map = model.decoder.layers[0].mlp.routing_maps[0]
    assert counts.tolist() == [0, 0, 0, 0, *routing_map.sum(0)[4:].tolist()]


def test_expert_health_places_an_expert_parallel_ranks_local_experts_at_their_global_ids():
    from chronomoe.capture.expert_norms import ExpertHealthTracker

    torch.manual_seed(0)
    model = GPTModel(ep_rank=1, ep_size=2)
    tracker = ExpertHealthTracker(model, Monitor("ep-health", lens=None).attach(model).layers)
    norms = tracker.measure("ep-health", 0, {}).layers[0].weight_norm
    local = model.decoder.layers[0].mlp.experts.local_experts
    with torch.no_grad():
        expected = [torch.cat([p.flatten() for p in expert.parameters()]).norm().item() for expert in local]
    assert norms[:4] == [0.0] * 4
    np.testing.assert_allclose(norms[4:], expected, rtol=1e-5)


# -- import ---------------------------------------------------------------------------------------
def dump(folder, rank: int, lines) -> None:
    path = folder / "tokens_per_expert" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for line in lines:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def line(iteration: int, layer: int, *microbatches, block: str = "decoder", **extra):
    return {"iter": iteration, "block": block, "layer": layer, "tpe": [list(m) for m in microbatches], **extra}


def test_microbatches_and_data_parallel_ranks_are_summed_per_iteration_and_layer(tmp_path):
    dump(tmp_path, 0, [line(10, 1, [1, 2, 3, 4], [1, 1, 1, 1]), line(10, 2, [4, 0, 0, 4]), line(20, 1, [2, 2, 2, 2])])
    dump(tmp_path, 1, [line(10, 1, [0, 0, 0, 8]), line(10, 2, [1, 1, 1, 1]), line(20, 1, [1, 1, 1, 1])])
    result = import_megatron(tmp_path, tmp_path / "runs", "imported")
    events = {(event.step, event.layer_id): event.expert_token_counts.tolist() for event in load_events(result.run_dir)}
    assert events == {
        (10, 1): [2, 3, 4, 13],
        (10, 2): [5, 1, 1, 5],
        (20, 1): [3, 3, 3, 3],
    }
    assert [snapshot.step for snapshot in load_snapshots(result.run_dir)] == [10, 20]
    assert (result.lines, dict(result.skipped)) == (6, {})


def test_the_import_reports_its_progress_as_the_bytes_of_every_rank_file_read(tmp_path):
    dump(tmp_path, 0, [line(10, 1, [1, 2, 3, 4]), "not json", line(20, 1, [2, 2, 2, 2])])
    dump(tmp_path, 1, [line(10, 1, [0, 0, 0, 8]), line(20, 1, [1, 1, 1, 1])])
    read: list[int] = []
    import_megatron(tmp_path, tmp_path / "runs", "progress", progress=read.append)
    sizes = sum(path.stat().st_size for path in (tmp_path / "tokens_per_expert").glob("rank*.jsonl"))
    assert len(read) == 5 and sum(read) == sizes  # every line, the skipped one too


def test_expert_parallel_ranks_fill_their_experts_and_tensor_parallel_copies_count_once(tmp_path):
    layout = MegatronLayout(expert_parallel=2, expert_tensor_parallel=2)
    # ranks 0, 1: ep_rank 0 (experts 0-1; rank 1 a copy); ranks 2, 3: ep_rank 1 (experts 2-3); rank 4: a second
    # data-parallel replica of ep_rank 0.
    for rank, counts in [(0, [1, 2]), (1, [1, 2]), (2, [3, 4]), (3, [3, 4]), (4, [10, 20])]:
        dump(tmp_path, rank, [line(5, 0, counts)])
    result = import_megatron(tmp_path, tmp_path / "runs", "ep", layout=layout)
    (event,) = load_events(result.run_dir)
    assert event.expert_token_counts.tolist() == [11, 22, 3, 4]
    assert dict(result.skipped) == {COPY: 2}


def test_mtp_layers_take_the_ids_after_the_decoder_layers(tmp_path):
    dump(tmp_path, 0, [line(1, 0, [1, 1]), line(1, 3, [1, 1]), line(1, 1, [2, 2], block="mtp", mtp_idx=0)])
    result = import_megatron(tmp_path, tmp_path / "runs", "mtp")
    assert result.layer_ids == {"decoder.0": 0, "decoder.3": 3, "mtp.0.1": 4}


def test_lines_that_cannot_be_counted_are_skipped_counted_by_reason_and_named_by_file_and_line(tmp_path):
    dump(
        tmp_path,
        0,
        [
            line(10, 0, [1, 1]),
            "{not json",
            line(10, 0, [1, -1]),
            {"iter": 10, "block": "decoder", "tpe": [[1, 1]]},
            line(10, 0, [1, 1], [1]),
            line(20, 0, [2, 2]),
            line(15, 0, [9, 9]),  # a resumed run appended to the file
        ],
    )
    (tmp_path / "tokens_per_expert" / "rank0.jsonl").open("a").write('{"iter": 30, "blo')
    result = import_megatron(tmp_path, tmp_path / "runs", "bad")
    assert dict(result.skipped) == {MALFORMED: 4, REPEATED: 1, TORN: 1}
    assert result.examples[0].startswith("rank0.jsonl:2: malformed: not JSON")
    assert result.examples[-1].startswith("rank0.jsonl:8: torn last line")
    assert [event.expert_token_counts.tolist() for event in load_events(result.run_dir)] == [[1, 1], [2, 2]]


def test_a_rank_whose_expert_count_disagrees_with_the_layers_is_skipped_and_reported(tmp_path):
    dump(tmp_path, 0, [line(1, 0, [1, 1, 1, 1]), line(2, 0, [2, 2, 2, 2])])
    dump(tmp_path, 1, [line(1, 0, [1, 1, 1, 1]), line(2, 0, [5, 5])])  # an expert-parallel dump imported without EP
    result = import_megatron(tmp_path, tmp_path / "runs", "width")
    assert dict(result.skipped) == {WIDTH: 1}
    assert result.examples == [
        "rank1.jsonl iter 2: expert count differs from the layer's: decoder.0 has 2 experts, earlier 4"
    ]
    assert [event.expert_token_counts.tolist() for event in load_events(result.run_dir)] == [[2, 2, 2, 2], [2, 2, 2, 2]]
    assert result.lines == 3


def test_a_top_k_above_a_layers_experts_is_refused(tmp_path):
    dump(tmp_path, 0, [line(1, 0, [1, 1])])
    with pytest.raises(InvalidInputError, match="top_k"):
        import_megatron(tmp_path, tmp_path / "runs", "k", layout=MegatronLayout(top_k=4))


def test_a_folder_without_rank_files_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match=r"rank<N>\.jsonl"):
        import_megatron(tmp_path, tmp_path / "runs", "none")


def test_chronomoe_import_megatron_writes_a_run_that_summary_replay_and_validate_read(tmp_path, capsys):
    healthy, collapsed = [25, 25, 25, 25], [97, 3, 0, 0]
    for rank in (0, 1):
        for step in range(1, 9):
            dump(tmp_path / "run", rank, [line(step, 0, healthy), line(step, 1, collapsed, collapsed)])
    runs = tmp_path / "runs"
    argv = ["import", "megatron", str(tmp_path / "run"), "--output-dir", str(runs), "--run-id", "m", "--top-k", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imported 32 lines of 2 rank files: 8 snapshots (steps 1..8), 2 layers" in out
    assert "collapse_confirmed at the last snapshot: layers 1" in out
    assert main(["summary", str(runs / "m")]) == 1
    assert main(["validate", str(runs / "m")]) == 0
    assert main(["replay", str(runs / "m")]) == 0
    assert "transitions: same as recorded" in capsys.readouterr().out
    (event, *_) = load_events(runs / "m")
    assert event.top_k == 2
    assert np.sum(event.expert_token_counts) == 200


def test_chronomoe_import_without_a_format_is_a_one_line_error(capsys):
    assert main(["import"]) == 2
    assert "chronomoe import megatron DIR" in capsys.readouterr().err
