"""Monitor under torch.distributed: gloo on CPU, 2 and 3 processes spawned here, each run bounded in time.

Each module fixture spawns one group of ranks that plays a scenario (a
top-level ``_scenario_*`` function) and pickles what every rank saw; the
tests then check one behaviour each against a single-process Monitor fed the
union of all ranks' tokens. Tokens are a pure function of (rank, step, layer)
(``_tokens``), so the parent can rebuild every rank's input.
"""

from __future__ import annotations

import datetime
import multiprocessing
import pickle
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chronomoe import AlertRules, Monitor, RoutingEvent, load_events, load_snapshots
from chronomoe.capture.distributed import CollectiveError, DistributedMismatchError

pytestmark = pytest.mark.distributed

RUN_DEADLINE_S = 45  # a spawned group that has not finished by then is killed and the test fails
RULES = AlertRules(pre_persistence=1, confirm_persistence=2)  # transitions within a few snapshots
N_LAYERS, N_EXPERTS, TOP_K = 3, 8, 2
STEPS = range(1, 25)
SNAPSHOT_EVERY = 6
CAPACITY = 4  # below SNAPSHOT_EVERY: windows also drain in step() (forced drains)
STOP_REQUEST_STEP = 12  # rank 1's handler asks to stop at this snapshot
EP_EXPERTS_PER_RANK = 4  # 3 ranks x 4 = 12 experts per layer under expert parallelism


# -- tokens -----------------------------------------------------------------------
def _tokens(rank: int, step: int, layer: int, n_experts: int = N_EXPERTS) -> torch.Tensor:
    """``[16, TOP_K]`` expert ids routed by ``rank`` at ``step`` in ``layer``.

    Layer 0 is uniform everywhere. Layer 1 looks collapsed on rank 0 alone
    (experts 0 and 1 only) but is spread over the group. Layer 2 collapses
    onto experts 0 and 1 on every rank from step 7 on.
    """
    generator = torch.Generator().manual_seed(10_000 * rank + 100 * step + layer)
    if (layer == 1 and rank == 0) or (layer == 2 and step > SNAPSHOT_EVERY):
        return torch.randint(0, 2, (16, TOP_K), generator=generator)
    return torch.randint(0, n_experts, (16, TOP_K), generator=generator)


def _plain(snapshot: Any) -> dict[str, Any]:
    """A snapshot as JSON-ready data without its wall-clock timestamps."""
    data = snapshot.model_dump(mode="json")
    data.pop("timestamp")
    for transition in data["transitions"]:
        transition.pop("timestamp")
    return data


# -- scenarios (run in each spawned rank) -------------------------------------------
def _scenario_union(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """Train-loop pattern over STEPS; rank 1's handler requests a stop at STOP_REQUEST_STEP."""
    monitor = Monitor(
        "union",
        output_dir=out / "runs",
        rules=RULES,
        n_experts=[N_EXPERTS] * N_LAYERS,
        capacity=CAPACITY,
        lens=None,
        controller=None,
        strict_handlers=True,
    )
    transitions = []
    monitor.bus.subscribe("transition", lambda transition: transitions.append(transition))
    if rank == 1:
        monitor.bus.subscribe(
            "snapshot",
            lambda snapshot: monitor.request_stop("rank 1 handler") if snapshot.step == STOP_REQUEST_STEP else None,
        )
    snapshots, stop_seen_at = [], None
    for step in STEPS:
        for layer in range(N_LAYERS):
            monitor.record(layer, indices=_tokens(rank, step, layer))
        monitor.step(step)
        if step % SNAPSHOT_EVERY == 0:
            snapshots.append(_plain(monitor.snapshot(step)))
        if monitor.should_stop and stop_seen_at is None:
            stop_seen_at = step
    monitor.close()
    return {
        "snapshots": snapshots,
        "transitions": [t.model_dump(mode="json", exclude={"timestamp"}) for t in transitions],
        "stop_seen_at": stop_seen_at,
        "stop_reason": monitor.stop_reason,
        "has_writer": monitor.writer is not None,
    }


def _scenario_three_ranks(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """Expert-parallel capture, a non-counting replica rank, pipeline stages, observe(), writing on all ranks."""
    contiguous = range(EP_EXPERTS_PER_RANK * rank, EP_EXPERTS_PER_RANK * (rank + 1))
    strided = [rank + world_size * j for j in range(EP_EXPERTS_PER_RANK)]
    expert_parallel = Monitor(
        "ep",
        n_experts=[EP_EXPERTS_PER_RANK * world_size] * 2,
        distributed={"expert_ids": {0: contiguous, 1: strided}},
        lens=None,
        controller=None,
    )
    for step in (1, 2):
        for layer in (0, 1):
            expert_parallel.record(layer, indices=_tokens(rank, step, layer, n_experts=EP_EXPERTS_PER_RANK))
        expert_parallel.step(step)
    ep_snapshot = _plain(expert_parallel.snapshot(2))

    # Ranks 1 and 2 are tensor-parallel peers routing the same tokens; rank 2 does not count them.
    replica = Monitor(
        "replica", n_experts=[N_EXPERTS] * 2, distributed={"count_tokens": rank != 2}, lens=None, controller=None
    )
    for layer in (0, 1):
        replica.record(layer, indices=_tokens(min(rank, 1), 1, layer))
    replica.step(1)
    replica_snapshot = _plain(replica.snapshot(1))

    # Pipeline stages: every rank declares all three layers and records only its own (layer == rank).
    pipeline = Monitor("pipeline", n_experts=[N_EXPERTS] * world_size, lens=None, controller=None)
    pipeline.record(rank, indices=_tokens(rank, 1, rank))
    pipeline.step(1)
    pipeline_snapshot = _plain(pipeline.snapshot(1))

    observer = Monitor(
        "observe", output_dir=out / "all-ranks", distributed={"write_on_all_ranks": True}, lens=None, controller=None
    )
    # Every rank reports layer 0; only rank 2 reports layer 3 (4 experts): n_layers and widths differ by rank.
    events = [
        RoutingEvent(
            run_id="observe",
            step=5,
            layer_id=0,
            n_experts=N_EXPERTS,
            top_k=1,
            expert_token_counts=[rank + 1] * N_EXPERTS,
        ),
    ]
    if rank == 2:
        events.append(
            RoutingEvent(run_id="observe", step=5, layer_id=3, n_experts=4, top_k=1, expert_token_counts=[1, 2, 3, 4])
        )
    observed = _plain(observer.observe(events, step=5))
    observer.close()
    return {"ep": ep_snapshot, "replica": replica_snapshot, "pipeline": pipeline_snapshot, "observed": observed}


def _scenario_mismatch(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """Rank 1 snapshots at another step, then stages an extra step, then never joins (rank 0 times out)."""
    errors: dict[str, str] = {}

    def window(extra_step: bool) -> Monitor:
        monitor = Monitor(
            "mismatch", n_experts=[N_EXPERTS], lens=None, controller=None, distributed={"collective_timeout": 1.0}
        )
        for step in (1, 2, 3) if not extra_step else (1, 2, 3, 4):
            monitor.record(0, indices=_tokens(rank, step, 0))
            monitor.step(step)
        return monitor

    try:
        window(extra_step=False).snapshot(3 if rank == 0 else 4)
    except DistributedMismatchError as error:
        errors["step"] = str(error)
    try:
        window(extra_step=rank == 1).snapshot(4)
    except DistributedMismatchError as error:
        errors["staged"] = str(error)
    absent = window(extra_step=False)
    if rank == 0:
        started = time.monotonic()
        try:
            absent.snapshot(3)
        except CollectiveError as error:
            errors["absent"] = str(error)
        errors["absent_waited_s"] = time.monotonic() - started
    else:
        time.sleep(2.5)  # alive but never joins, until rank 0 has timed out
    return errors


def _scenario_governed(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """Replicas of the toy model (same weights, each rank its own batches) under a PressureController that acts
    at every snapshot: the router biases every rank applies, and the decisions."""
    from chronomoe.controller import PressureController
    from chronomoe.toy_model import DemoConfig, DemoMoEModel, batch_at, make_corpus

    config = DemoConfig(n_layers=2, hidden_size=32, expert_hidden_size=32, batch_size=4, seq_len=16)
    torch.manual_seed(0)
    model = DemoMoEModel(config).train()
    corpus = make_corpus(config, seed=rank, n_sequences=64)
    monitor = Monitor(
        "governed",
        output_dir=out / "governed",
        lens=None,
        controller=PressureController(mode="continuous", tolerance=0.0, max_step=0.05),
    )
    monitor.attach(model)
    decisions = []
    monitor.bus.subscribe("decision", lambda decision: decisions.append(decision.model_dump(mode="json")))
    with torch.no_grad():
        for step in range(1, 13):
            model(batch_at(corpus, step, config.batch_size)[:, :-1])
            monitor.step(step)
            monitor.snapshot(step)
    biases = [
        module.chronomoe_selection_bias.numpy().tobytes()
        for module in model.modules()
        if hasattr(module, "chronomoe_selection_bias")
    ]
    monitor.close()
    return {"biases": biases, "decisions": decisions, "has_writer": monitor.writer is not None}


SCENARIOS: dict[str, Callable[[int, int, Path], dict[str, Any]]] = {
    "union": _scenario_union,
    "three_ranks": _scenario_three_ranks,
    "mismatch": _scenario_mismatch,
    "governed": _scenario_governed,
}


def _rank_main(rank: int, world_size: int, port: int, out: str, scenario: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    result = SCENARIOS[scenario](rank, world_size, Path(out))
    (Path(out) / f"{scenario}-{rank}.pkl").write_bytes(pickle.dumps(result))
    if scenario != "mismatch":  # the timed-out collective leaves that group unusable
        dist.destroy_process_group()


def _run_ranks(scenario: str, world_size: int, out: Path) -> list[dict[str, Any]]:
    """Spawn ``world_size`` ranks playing ``scenario``; their results, by rank. Killed at RUN_DEADLINE_S."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Ranks fork from a server that imported torch once: starting a group costs a fork, not an import of torch.
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch.distributed", "chronomoe", __name__])
    context = mp.start_processes(
        _rank_main,
        args=(world_size, port, str(out), scenario),
        nprocs=world_size,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + RUN_DEADLINE_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} ranks playing {scenario!r} did not finish in {RUN_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [pickle.loads((out / f"{scenario}-{rank}.pkl").read_bytes()) for rank in range(world_size)]


def _single_process_union(ranks: range) -> dict[str, Any]:
    """The union scenario's snapshots from one Monitor recording every rank's tokens."""
    reference = Monitor(
        "union", rules=RULES, n_experts=[N_EXPERTS] * N_LAYERS, capacity=CAPACITY, lens=None, controller=None
    )
    snapshots = []
    for step in STEPS:
        for layer in range(N_LAYERS):
            reference.record(layer, indices=torch.cat([_tokens(rank, step, layer) for rank in ranks]))
        reference.step(step)
        if step % SNAPSHOT_EVERY == 0:
            snapshots.append(_plain(reference.snapshot(step)))
    return {"snapshots": snapshots, "monitor": reference}


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def union_run(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("union")
    return {"ranks": _run_ranks("union", 2, out), "out": out, "reference": _single_process_union(range(2))}


@pytest.fixture(scope="module")
def three_rank_run(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("three")
    return {"ranks": _run_ranks("three_ranks", 3, out), "out": out}


@pytest.fixture(scope="module")
def mismatch_run(tmp_path_factory) -> list[dict[str, Any]]:
    return _run_ranks("mismatch", 2, tmp_path_factory.mktemp("mismatch"))


# -- snapshots and alerts ------------------------------------------------------------------
def test_distributed_snapshots_equal_single_process_snapshots_of_all_ranks_tokens(union_run):
    expected = union_run["reference"]["snapshots"]
    for rank, result in enumerate(union_run["ranks"]):
        assert result["snapshots"] == expected, f"rank {rank}"


def test_a_layer_collapsed_on_one_rank_only_is_judged_on_the_group_tokens(union_run):
    rank_0_layer_1 = [snapshot["layers"][1] for snapshot in union_run["ranks"][0]["snapshots"]]
    assert all(layer["dead_expert_count"] == 0 for layer in rank_0_layer_1)
    assert {layer["alert_state"] for layer in rank_0_layer_1} == {"nominal"}


def test_every_rank_publishes_the_same_transitions(union_run):
    rank_0, rank_1 = (result["transitions"] for result in union_run["ranks"])
    assert rank_0 == rank_1
    assert [(t["layer_id"], t["dest"]) for t in rank_0] == [(2, "pre_collapse"), (2, "collapse_confirmed")]


# -- stopping -------------------------------------------------------------------------------
def test_a_stop_requested_on_one_rank_is_seen_by_every_rank_at_the_next_reducing_call(union_run):
    # Requested at the snapshot of step 12; steps 13-16 fill the staging ring (capacity 4), so the
    # drain in step(16) is the next collective and every rank sees should_stop there.
    assert [result["stop_seen_at"] for result in union_run["ranks"]] == [16, 16]


def test_ranks_without_the_request_name_the_requesting_rank(union_run):
    assert union_run["ranks"][0]["stop_reason"] == "a handler on rank 1 of the process group asked to stop"
    assert union_run["ranks"][1]["stop_reason"] == "rank 1 handler"


# -- writing ----------------------------------------------------------------------------------
def test_only_rank_0_writes(union_run):
    assert [result["has_writer"] for result in union_run["ranks"]] == [True, False]
    assert [path.name for path in (union_run["out"] / "runs").iterdir()] == ["union"]
    written = load_snapshots(union_run["out"] / "runs" / "union")
    assert [_plain(snapshot) for snapshot in written] == union_run["reference"]["snapshots"]


def test_written_routing_events_hold_the_group_per_step_counts(union_run):
    written = load_events(union_run["out"] / "runs" / "union")
    totals = {(event.step, event.layer_id): event.expert_token_counts.tolist() for event in written}
    assert len(totals) == len(STEPS) * N_LAYERS
    for (step, layer), counts in totals.items():
        union = torch.cat([_tokens(rank, step, layer) for rank in range(2)]).flatten()
        assert counts == torch.bincount(union, minlength=N_EXPERTS).tolist(), (step, layer)


def test_write_on_all_ranks_gives_each_rank_its_own_folder(three_rank_run):
    folders = sorted(path.name for path in (three_rank_run["out"] / "all-ranks").iterdir())
    assert folders == ["rank0", "rank1", "rank2"]
    for folder in folders:
        assert len(load_snapshots(three_rank_run["out"] / "all-ranks" / folder / "observe")) == 1


# -- layouts ----------------------------------------------------------------------------------------
def test_expert_parallel_local_ids_give_the_global_picture(three_rank_run):
    experts = EP_EXPERTS_PER_RANK * 3
    expected = []
    for layer, global_ids in (
        (0, lambda rank: list(range(4 * rank, 4 * rank + 4))),
        (1, lambda rank: [rank + 3 * j for j in range(4)]),
    ):
        counts = torch.zeros(experts, dtype=torch.int64)
        for rank in range(3):
            for step in (1, 2):
                local = _tokens(rank, step, layer, n_experts=EP_EXPERTS_PER_RANK).flatten()
                counts += torch.bincount(torch.tensor(global_ids(rank))[local], minlength=experts)
        expected.append(counts.tolist())
    for result in three_rank_run["ranks"]:
        assert [layer["expert_token_counts"] for layer in result["ep"]["layers"]] == expected


def test_a_rank_with_count_tokens_false_joins_without_counting(three_rank_run):
    expected = [
        torch.bincount(torch.cat([_tokens(rank, 1, layer) for rank in (0, 1)]).flatten(), minlength=N_EXPERTS).tolist()
        for layer in (0, 1)
    ]
    for result in three_rank_run["ranks"]:
        assert [layer["expert_token_counts"] for layer in result["replica"]["layers"]] == expected


def test_pipeline_stages_declaring_all_layers_combine_into_the_whole_model(three_rank_run):
    expected = [torch.bincount(_tokens(layer, 1, layer).flatten(), minlength=N_EXPERTS).tolist() for layer in range(3)]
    for result in three_rank_run["ranks"]:
        assert [layer["expert_token_counts"] for layer in result["pipeline"]["layers"]] == expected


def test_observe_sums_counts_over_ranks_and_keeps_layers_some_ranks_do_not_report(three_rank_run):
    for result in three_rank_run["ranks"]:
        layers = result["observed"]["layers"]
        assert [layer["layer_id"] for layer in layers] == [0, 1, 2, 3]
        assert layers[0]["expert_token_counts"] == [1 + 2 + 3] * N_EXPERTS
        assert [layers[1]["no_data"], layers[2]["no_data"]] == [True, True]
        assert (layers[3]["n_experts"], layers[3]["expert_token_counts"]) == (4, [1, 2, 3, 4])


# -- failures ---------------------------------------------------------------------------------------
def test_ranks_snapshotting_different_steps_all_raise_an_error_naming_both_steps(mismatch_run):
    for rank, result in enumerate(mismatch_run):
        assert "step: 3 on some ranks, 4 on others" in result["step"]
        assert f"this rank: {3 if rank == 0 else 4}" in result["step"]


def test_ranks_with_different_staged_step_counts_all_raise_before_exchanging_counts(mismatch_run):
    for result in mismatch_run:
        assert "staged steps: 3 on some ranks, 4 on others" in result["staged"]


def test_a_rank_that_never_joins_is_a_timeout_error_not_a_hang(mismatch_run):
    assert "snapshot() at step 3 failed after waiting up to 1 s" in mismatch_run[0]["absent"]
    assert mismatch_run[0]["absent_waited_s"] < 5.0  # the 1 s timeout, with slack for a loaded CI machine


# -- governance under torch.distributed ---------------------------------------------------------
@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def governed_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"governed-{request.param}")
    return _run_ranks("governed", request.param, out), out


def test_every_rank_applies_bitwise_the_same_router_bias_after_many_decisions(governed_run):
    ranks, _ = governed_run
    first = ranks[0]["biases"]
    assert len(first) == 2 and any(any(bias) for bias in first)  # two routers, and the bias has moved
    assert all(rank["biases"] == first for rank in ranks[1:])


def test_every_rank_makes_the_same_decisions_from_the_reduced_snapshot(governed_run):
    ranks, _ = governed_run

    def without_time(decisions):
        return [{key: value for key, value in d.items() if key != "timestamp"} for d in decisions]

    assert len(ranks[0]["decisions"]) == 12 * 2
    assert any(d["action"] == "adjust" and d["applied"] for d in ranks[0]["decisions"])
    assert all(without_time(rank["decisions"]) == without_time(ranks[0]["decisions"]) for rank in ranks[1:])


def test_only_the_writing_rank_writes_the_decisions(governed_run):
    from chronomoe import load_decisions

    ranks, out = governed_run
    assert [rank["has_writer"] for rank in ranks] == [True] + [False] * (len(ranks) - 1)
    written = load_decisions(out / "governed" / "governed")
    assert len(written) == 12 * 2
