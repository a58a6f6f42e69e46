"""CPU cost of the expert-health telemetry on the demo model's training step.

Three identical copies of the demo model (``chronomoe.toy_model``, default
size: 4 layers x 8 experts, top-1, 16 x 64 tokens per step) train on the same
batches, interleaved in one process, each with its own ``Monitor`` attached
(``monitor.step`` after every step, ``monitor.snapshot`` every 10 steps, no
run folder):

* ``recorder``: routing capture only;
* ``health``: the same plus an
  :class:`~chronomoe.capture.expert_norms.ExpertHealthTracker` hooked on the
  optimizer (per-expert squared gradient norms at every step) and following
  the monitor (weight norms and one host copy per snapshot);
* ``baseline``: no telemetry.

Each sample times 10 consecutive steps (one snapshot); figures are medians
over the samples, per step.

Run: ``.venv/bin/python benchmarks/bench_expert_health_cpu.py [--repeats N] [--threads N]``;
prints JSON (milliseconds per step and the ratios).
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import emit, interleaved_medians

from chronomoe import Monitor
from chronomoe.capture.expert_norms import ExpertHealthTracker
from chronomoe.demo import BALANCED, SNAPSHOT_EVERY, training_loss
from chronomoe.toy_model import DemoConfig, DemoMoEModel, batch_at, make_corpus, make_optimizer

VARIANTS = ("baseline", "recorder", "health")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="samples of 10 steps per variant (default 15)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant first (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    config = DemoConfig()
    corpus = make_corpus(config, seed=0)
    torch.manual_seed(0)
    first = DemoMoEModel(config)
    models = {name: first if name == "baseline" else copy.deepcopy(first) for name in VARIANTS}
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    monitors = {name: Monitor(f"bench-{name}", lens=None, controller=None) for name in VARIANTS[1:]}
    layers = {name: monitor.attach(models[name]).layers for name, monitor in monitors.items()}
    tracker = ExpertHealthTracker(models["health"], layers["health"])
    tracker.hook_optimizer(optimizers["health"])
    tracker.follow(monitors["health"])
    steps = dict.fromkeys(VARIANTS, 0)

    def train_step(name: str) -> None:
        steps[name] += 1
        objective, _ = training_loss(models[name], batch_at(corpus, steps[name], config.batch_size), BALANCED)
        optimizers[name].zero_grad(set_to_none=True)
        objective.backward()
        optimizers[name].step()
        if name in monitors:
            monitors[name].step(steps[name])
            if steps[name] % SNAPSHOT_EVERY == 0:
                monitors[name].snapshot(steps[name])

    medians = interleaved_medians(
        {name: (lambda name=name: train_step(name)) for name in VARIANTS},
        repeats=args.repeats,
        warmup=args.warmup,
        number=SNAPSHOT_EVERY,
    )
    emit(
        {
            "benchmark": "expert_health_cpu",
            "model": {"layers": config.n_layers, "experts": config.n_experts, "top_k": config.top_k},
            "tracked_layers": len(tracker.layers),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps_per_sample": SNAPSHOT_EVERY,
            "samples_per_variant": args.repeats,
            **{f"{name}_ms_per_step": medians[name] * 1e3 for name in VARIANTS},
            "ratio_health_to_recorder": medians["health"] / medians["recorder"],
            "ratio_health_to_baseline": medians["health"] / medians["baseline"],
        }
    )


if __name__ == "__main__":
    main()
