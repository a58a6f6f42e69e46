"""CPU overhead of ChronoMoE's capture on the demo model's training step.

Two identical copies of the demo model (``chronomoe.toy_model``, default size:
4 layers x 8 experts, top-1, 16 x 64 tokens per step) train on the same
batches, interleaved in one process:

* ``baseline``: forward + backward + AdamW step, no telemetry;
* ``recorder``: the same step with ``monitor.attach(model)`` (a forward
  pre-hook per MoE layer feeding the sync-free recorder), ``monitor.step``
  after every step and ``monitor.snapshot`` every 10 steps, writing the run
  folder (routing events, snapshots) to a temporary directory. A default
  ``Monitor`` (identity lens, no-op controller).

Each sample times 10 consecutive steps, so it holds exactly one snapshot; the
figures are medians over the samples, per step.

Run: ``.venv/bin/python benchmarks/bench_capture_cpu.py [--repeats N] [--threads N]``;
prints JSON (milliseconds per step, and the ratio recorder / baseline).
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
from _common import emit, interleaved_medians

from chronomoe import Monitor
from chronomoe.demo import BALANCED, SNAPSHOT_EVERY, training_loss
from chronomoe.toy_model import DemoConfig, DemoMoEModel, batch_at, make_corpus, make_optimizer


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
    models = {"baseline": DemoMoEModel(config)}
    models["recorder"] = copy.deepcopy(models["baseline"])
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    steps = dict.fromkeys(models, 0)

    def train_step(name: str) -> int:
        steps[name] += 1
        objective, _ = training_loss(models[name], batch_at(corpus, steps[name], config.batch_size), BALANCED)
        optimizers[name].zero_grad(set_to_none=True)
        objective.backward()
        optimizers[name].step()
        return steps[name]

    with tempfile.TemporaryDirectory() as output_dir, Monitor("bench-capture-cpu", output_dir) as monitor:
        attachment = monitor.attach(models["recorder"])

        def recorded_step() -> None:
            step = train_step("recorder")
            monitor.step(step)
            if step % SNAPSHOT_EVERY == 0:
                monitor.snapshot(step)

        medians = interleaved_medians(
            {"baseline": lambda: train_step("baseline"), "recorder": recorded_step},
            repeats=args.repeats,
            warmup=args.warmup,
            number=SNAPSHOT_EVERY,
        )

    emit(
        {
            "benchmark": "capture_cpu",
            "model": {
                "layers": config.n_layers,
                "experts": config.n_experts,
                "top_k": config.top_k,
                "hidden": config.hidden_size,
                "tokens_per_step": config.batch_size * config.seq_len,
                "hooked_layers": len(attachment.layers),
            },
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps_per_sample": SNAPSHOT_EVERY,
            "samples_per_variant": args.repeats,
            "baseline_ms_per_step": medians["baseline"] * 1e3,
            "recorder_ms_per_step": medians["recorder"] * 1e3,
            "ratio_recorder_to_baseline": medians["recorder"] / medians["baseline"],
        }
    )


if __name__ == "__main__":
    main()
