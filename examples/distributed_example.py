"""Train a tiny Mixture-of-Experts model with DistributedDataParallel and a ChronoMoE Monitor on every rank.

Run (CPU, gloo; on GPUs it uses NCCL, one GPU per process)::

    torchrun --nproc_per_node 2 examples/distributed_example.py

Each rank trains on its own batches; the Monitor sums the routing counts of
all ranks at every snapshot, so every rank holds the same global snapshot and
the same alert states. From ``--collapse-after`` on, the router of layer 1 is
pushed onto experts 0 and 1 (an injected routing collapse). A handler that
runs on rank 0 only asks to stop on COLLAPSE_CONFIRMED; every rank sees
``monitor.should_stop`` at the same later snapshot and leaves the loop
together. Only rank 0 writes the run folder: ``--output-dir``/distributed-example,
or distributed-example-2, -3, ... when an earlier run of the example is there.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from chronomoe import AlertState, Monitor

VOCAB, DIM, HIDDEN, N_EXPERTS, TOP_K, N_LAYERS, TOKENS = 64, 32, 64, 8, 2, 2, 256


class Experts(nn.Module):
    """``N_EXPERTS`` two-layer MLPs; ``forward(hidden_states, top_k_index, top_k_weights)`` is what ``attach`` hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.num_experts, self.top_k = N_EXPERTS, TOP_K
        self.w_in = nn.Parameter(torch.randn(N_EXPERTS, DIM, HIDDEN) / DIM**0.5)
        self.w_out = nn.Parameter(torch.randn(N_EXPERTS, HIDDEN, DIM) / HIDDEN**0.5)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        # Dense over experts (tiny sizes): every expert runs on every token, the routing weights pick.
        weights = hidden_states.new_zeros(hidden_states.shape[0], N_EXPERTS).scatter_add(1, top_k_index, top_k_weights)
        outputs = torch.einsum(
            "teh,ehd->ted", F.gelu(torch.einsum("td,edh->teh", hidden_states, self.w_in)), self.w_out
        )
        return torch.einsum("te,ted->td", weights, outputs)


class MoEBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(DIM, N_EXPERTS)
        self.experts = Experts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, index = self.router(x).softmax(dim=-1).topk(TOP_K, dim=-1)
        return x + self.experts(x, index, weights / weights.sum(dim=-1, keepdim=True))


class TinyMoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(MoEBlock() for _ in range(N_LAYERS))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--snapshot-every", type=int, default=5)
    parser.add_argument("--collapse-after", type=int, default=20, help="step after which layer 1's router collapses")
    parser.add_argument("--output-dir", default="runs")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --nproc_per_node 2 examples/distributed_example.py")

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank = dist.get_rank()

    torch.manual_seed(0)  # same initial weights on every rank
    model = TinyMoE().to(device)
    collapsing_router = model.layers[1].router
    ddp_model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=3e-3)

    # Created after init_process_group: the Monitor reduces over the world group and only rank 0 writes.
    # on_existing_run="new": running the example again records into a new folder instead of refusing.
    monitor = Monitor("distributed-example", output_dir=args.output_dir, model_name="TinyMoE", on_existing_run="new")
    monitor.attach(ddp_model)
    if rank == 0:  # a rank-specific handler: the stop still reaches every rank at the same step
        monitor.bus.subscribe(
            "transition",
            lambda transition: monitor.request_stop(
                f"layer {transition.layer_id} collapse confirmed at step {transition.step}"
            ),
            dest=AlertState.COLLAPSE_CONFIRMED,
        )
        monitor.bus.subscribe(
            "transition",
            lambda transition: print(
                f"step {transition.step}: layer {transition.layer_id} {transition.source} -> {transition.dest}"
            ),
        )

    data = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    step = 0
    for step in range(1, args.steps + 1):
        if step == args.collapse_after + 1:
            with torch.no_grad():
                collapsing_router.bias[:2] += 20.0
        tokens = torch.randint(0, VOCAB, (TOKENS,), generator=data).to(device)
        loss = F.cross_entropy(ddp_model(tokens), (tokens * 3 + 1) % VOCAB)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step)
        if step % args.snapshot_every == 0:
            snapshot = monitor.snapshot(step, train_loss=loss.item())
            if rank == 0:
                print(
                    f"step {step}: loss {loss.item():.3f}, "
                    + ", ".join(
                        f"layer {layer.layer_id} Neff {layer.n_effective:.2f} {layer.alert_state}"
                        for layer in snapshot.layers
                    )
                )
        if monitor.should_stop:
            break

    counts = b"".join(layer.expert_token_counts.tobytes() for layer in monitor.last_snapshot.layers)
    print(
        f"rank {rank}: left the loop at step {step} (stop: {monitor.stop_reason}); last snapshot step "
        f"{monitor.last_snapshot.step}, counts digest {hashlib.sha256(counts).hexdigest()[:12]}",
        flush=True,
    )
    if monitor.run_dir is not None:
        print(f"rank {rank}: wrote {monitor.run_dir}", flush=True)
    monitor.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
