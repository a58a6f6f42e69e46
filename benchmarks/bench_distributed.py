"""Cross-rank reduction at DeepSeek-V3 size (58 MoE layers x 256 experts): correctness and cost per snapshot.

Run under torchrun, NCCL on GPUs (gloo on CPU when CUDA is absent)::

    torchrun --nproc_per_node 2 benchmarks/bench_distributed.py

1. **check**: every rank records its own top-8 routing for a few steps and
   snapshots through a distributed :class:`~chronomoe.Monitor`; rank 0
   compares the snapshot with ``SystemSnapshot.from_counts`` of the union of
   all ranks' tokens (each rank's tokens are a function of its rank, so rank 0
   can rebuild them) and the routing events with the union's per-step counts.
2. **cost**: for windows of 1, 10 and 100 staged steps, the median time of a
   recorder drain (device-to-host copy of ``[steps, 2, 58, 258]`` int64)
   without reduction and with the monitor's reduction (agreement MAX
   all-reduce of 9 int64 + SUM all-reduce of the block); their difference is
   the collectives' cost per snapshot. ``agreement_only`` drains an empty
   ring: the agreement collective alone (the payload is skipped). Ranks are aligned by a barrier before
   each timed drain; times are rank 0's medians and the slowest rank's.

Prints one JSON object (times in ms) on rank 0; exits 1 if the check fails.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from _common import emit

from chronomoe import Monitor, SystemSnapshot, load_events
from chronomoe.capture.distributed import RankReduction
from chronomoe.capture.recorder import RoutingRecorder

N_LAYERS, N_EXPERTS, TOP_K = 58, 256, 8
TOKENS_PER_STEP = 512  # per rank and layer
CHECK_STEPS = 4
WINDOWS = (1, 10, 100)  # staged steps per snapshot
REPEATS, WARMUP = 21, 3


def tokens(rank: int, step: int, layer: int, device: torch.device) -> torch.Tensor:
    """``[TOKENS_PER_STEP, TOP_K]`` expert ids routed by ``rank``; skewed so layers differ."""
    generator = torch.Generator().manual_seed(1_000_003 * rank + 1_009 * step + layer)
    logits = torch.randn(TOKENS_PER_STEP, N_EXPERTS, generator=generator) * (1 + layer / 10)
    return logits.topk(TOP_K, dim=-1).indices.to(device)


def check(rank: int, world_size: int, device: torch.device) -> dict[str, object]:
    """Distributed snapshot and events == single-process snapshot and events of the union of all ranks."""
    output_dir = tempfile.mkdtemp(prefix="bench_distributed_")  # only rank 0 writes there
    monitor = Monitor(
        "check", output_dir=output_dir, n_experts=[N_EXPERTS] * N_LAYERS, top_k=TOP_K, lens=None, controller=None
    )
    for step in range(1, CHECK_STEPS + 1):
        for layer in range(N_LAYERS):
            monitor.record(layer, indices=tokens(rank, step, layer, device))
        monitor.step(step)
    snapshot = monitor.snapshot(CHECK_STEPS)
    monitor.close()
    if rank != 0:
        shutil.rmtree(output_dir)
        return {}
    events = load_events(os.path.join(output_dir, "check"))
    shutil.rmtree(output_dir)
    per_step = np.zeros((CHECK_STEPS, N_LAYERS, N_EXPERTS), dtype=np.int64)
    for step in range(1, CHECK_STEPS + 1):
        for layer in range(N_LAYERS):
            union = torch.cat([tokens(r, step, layer, torch.device("cpu")) for r in range(world_size)]).flatten()
            per_step[step - 1, layer] = torch.bincount(union, minlength=N_EXPERTS).numpy()
    reference = SystemSnapshot.from_counts(per_step.sum(axis=0), step=CHECK_STEPS, run_id="check")
    layers_equal = [layer.model_dump(mode="json") for layer in snapshot.layers] == [
        layer.model_dump(mode="json") for layer in reference.layers
    ]
    events_equal = len(events) == CHECK_STEPS * N_LAYERS and all(
        np.array_equal(event.expert_token_counts, per_step[event.step - 1, event.layer_id]) for event in events
    )
    return {
        "snapshot_equals_single_process_union": layers_equal,
        "events_equal_union_per_step_counts": events_equal,
        "tokens_per_layer_per_window": int(per_step[:, 0].sum()),
    }


def timed_drains(
    recorder: RoutingRecorder, reduction: RankReduction | None, steps: int, device: torch.device
) -> list[float]:
    """Seconds of each of REPEATS drains of ``steps`` staged steps (after WARMUP untimed ones)."""
    counts = torch.randint(0, 64, (N_EXPERTS,), device=device)
    samples = []
    for repeat in range(WARMUP + REPEATS):
        for step in range(steps):
            for layer in range(N_LAYERS):
                recorder.record(layer, counts=counts)
            recorder.end_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        if reduction is not None:
            reduction.expect(repeat, "snapshot")
        start = time.perf_counter()
        recorder.drain()
        elapsed = time.perf_counter() - start
        if repeat >= WARMUP:
            samples.append(elapsed)
    return samples


def cost(device: torch.device) -> dict[str, dict[str, float]]:
    """Median ms of the agreement alone, and per drain for each window size, local vs reduced.

    Rank 0's medians and the slowest rank's.
    """
    reduction = RankReduction(on_stop=lambda reason: None)
    layer_ids, n_experts = list(range(N_LAYERS)), [N_EXPERTS] * N_LAYERS
    empty = RoutingRecorder(
        n_experts, device, top_k=TOP_K, capacity=1, reduce=reduction.staged_reducer(layer_ids, n_experts, 1)
    )
    agreement = statistics.median(timed_drains(empty, reduction, 0, device)) * 1e3
    gathered_agreement: list[float] = [0.0] * dist.get_world_size()
    dist.all_gather_object(gathered_agreement, agreement)
    results = {"agreement_only": {"ms": round(agreement, 4), "slowest_rank_ms": round(max(gathered_agreement), 4)}}
    for steps in WINDOWS:
        local = RoutingRecorder(n_experts, device, top_k=TOP_K, capacity=steps + 1)
        reduced = RoutingRecorder(
            n_experts,
            device,
            top_k=TOP_K,
            capacity=steps + 1,
            reduce=reduction.staged_reducer(layer_ids, n_experts, steps + 1),
        )
        medians = {
            "drain_local_ms": statistics.median(timed_drains(local, None, steps, device)) * 1e3,
            "drain_reduced_ms": statistics.median(timed_drains(reduced, reduction, steps, device)) * 1e3,
        }
        medians["collectives_ms"] = medians["drain_reduced_ms"] - medians["drain_local_ms"]
        gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, medians)
        results[f"{steps}_steps"] = {
            "payload_bytes": steps * 2 * N_LAYERS * (N_EXPERTS + 2) * 8,
            **{name: round(value, 4) for name, value in medians.items()},
            **{f"slowest_rank_{name}": round(max(m[name] for m in gathered), 4) for name in medians},
        }
    return results


def main() -> None:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    checked = check(rank, world_size, device)
    measured = cost(device)
    if rank == 0:
        emit(
            {
                "benchmark": "distributed reduction per snapshot",
                "backend": str(dist.get_backend()),
                "world_size": world_size,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "layers": N_LAYERS,
                "experts": N_EXPERTS,
                "top_k": TOP_K,
                "check": checked,
                "per_snapshot": measured,
            }
        )
    passed = all(value for key, value in checked.items() if key.endswith(("union", "counts")))
    dist.destroy_process_group()
    if rank == 0 and not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
