"""GPU overhead of routing capture on a Mixtral-style training step, and a sync check of the capture hooks.

Model: ``chronomoe.toy_model.DemoMoEModel`` at the size of issue 4: 8 layers of
64 experts, top-8, hidden 1024 (SwiGLU experts of 1024, 16 attention heads),
vocabulary 32000, batch 8 x 1024 tokens; the experts dispatch with a fixed
capacity (factor 1.25: fixed shapes, no host sync in the model); bf16
autocast over fp32 weights, fused AdamW; objective = LM loss + 0.01 x the
Switch balancing loss. Tokens are uniform random ids.

Timing (default mode): three variants in one process, interleaved; each
sample is one 10-step window, CUDA-synchronised at both ends; medians per step:

* ``baseline``: no telemetry;
* ``recorder``: ``monitor.attach(model)`` (a forward pre-hook per experts
  module feeding ``Monitor.record``, sync-free), ``monitor.step`` after each
  step, ``monitor.snapshot`` at the window's end (its one device-to-host
  copy), writing the run folder to a temporary directory;
* ``controlled``: ``recorder`` with a :class:`~chronomoe.controller.PressureController`
  acting at every snapshot (continuous mode, tolerance 0): the router bias
  actuator's selection hook runs in every router forward (top-k of logits +
  bias, gates from the unbiased softmax) and every snapshot applies a new bias;
* ``seed_style``: the seed's pattern: a forward pre-hook per experts module
  builds ``RoutingEvent.from_router_output(..., used_capacity.cpu().tolist(), ...)``
  (a host-device sync per layer and forward); at the window's end the events
  are written and ``SystemSnapshot.from_events(..., alert_history=...)`` is built.

``--sync-check``: after warm-up, full training steps with the recorder
attached, a PressureController acting through the router bias actuator, and
``torch.cuda.set_sync_debug_mode("error")`` switched on only around
ChronoMoE's code on the step's path: from a forward pre-hook placed before
the capture hook to one placed after it on each experts module, from a hook
before the lens pre-hook to one after the bias selection hook on each
router, and around ``monitor.step``; then around one ``actuator.apply`` of a
new bias. The model's own code and the window's snapshot (the one intended
copy) run outside it. Two controls prove the guard is live: a ``.item()``
under it must raise, and so must the seed-style hook under the same guard.
Exit code 0 when ChronoMoE's code passes and both controls raise, else 1.

Run on a GPU machine (torch + chronomoe only)::

    python benchmarks/bench_capture_gpu.py                # timing JSON
    python benchmarks/bench_capture_gpu.py --sync-check   # pass/fail JSON

Without CUDA it prints ``{"skipped": ...}`` and exits 0. ``--device cpu`` with
smaller sizes (``--layers 2 --experts 8 ...``) runs the timing code path on the
CPU as a smoke test; its figures say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from _common import emit

from chronomoe import Monitor, RoutingEvent, SystemSnapshot, TelemetryWriter
from chronomoe.controller import PressureController
from chronomoe.demo import BALANCED, training_loss
from chronomoe.toy_model import DemoConfig, DemoExperts, DemoMoEModel, make_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync-check", action="store_true", help="check the capture hooks never synchronise")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run of the code path)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--expert-hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--window", type=int, default=10, help="steps per sample and per snapshot (default 10)")
    parser.add_argument("--repeats", type=int, default=10, help="samples per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed windows per variant first (default 1)")
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        vocab_size=args.vocab,
        seq_len=args.seq,
        batch_size=args.batch,
        hidden_size=args.hidden,
        n_heads=args.heads,
        n_layers=args.layers,
        n_experts=args.experts,
        top_k=args.top_k,
        expert_hidden_size=args.expert_hidden,
        capacity_factor=args.capacity_factor,
    )


class Bench:
    """The model, its optimizer, one fixed batch, and a global step counter shared by all variants."""

    def __init__(self, config: DemoConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        torch.manual_seed(0)
        with device:  # built in place: the full size has 1.6e9 parameters
            self.model = DemoMoEModel(config)
        self.optimizer = make_optimizer(self.model, fused=device.type == "cuda")
        generator = torch.Generator().manual_seed(0)
        shape = (config.batch_size, config.seq_len + 1)
        self.batch = torch.randint(0, config.vocab_size, shape, generator=generator).to(device)
        self.step = 0

    def train_step(self) -> int:
        self.step += 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            objective, _ = training_loss(self.model, self.batch, BALANCED)
        objective.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.step

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def experts_modules(self) -> list[tuple[int, DemoExperts]]:
        return [(layer_id, layer.mlp.experts) for layer_id, layer in enumerate(self.model.layers)]

    def routers(self) -> list[torch.nn.Module]:
        return [layer.mlp.gate for layer in self.model.layers]


# -- the variants: each returns (enter, run one window, leave) --------------------------------
Variant = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]


def baseline_variant(bench: Bench, window: int) -> Variant:
    def run() -> None:
        for _ in range(window):
            bench.train_step()

    return (lambda: None), run, (lambda: None)


def recorder_variant(bench: Bench, window: int, monitor: Monitor) -> Variant:
    def enter() -> None:
        monitor.attach(bench.model)

    def run() -> None:
        for _ in range(window):
            monitor.step(bench.train_step())
        monitor.snapshot(bench.step)

    return enter, run, monitor.detach


def seed_style_hooks(bench: Bench, events: list[RoutingEvent]) -> list[torch.utils.hooks.RemovableHandle]:
    """The seed's capture: per layer and forward, used_capacity copied to the host into a RoutingEvent."""
    handles = []
    for layer_id, experts in bench.experts_modules():

        def hook(module: DemoExperts, args: tuple, layer_id: int = layer_id) -> None:
            top_k_index = args[1]
            tokens, top_k = top_k_index.shape
            assignments = top_k_index.reshape(-1)
            counts = torch.zeros(module.num_experts, dtype=torch.int64, device=assignments.device)
            counts.index_add_(0, assignments, torch.ones_like(assignments))
            used_capacity = counts.clamp_(max=module.capacity(tokens, top_k))
            events.append(
                RoutingEvent.from_router_output(
                    run_id="seed-style",
                    step=bench.step,
                    mode="TRAIN",
                    layer_id=layer_id,
                    used_capacity=used_capacity.cpu().tolist(),
                    n_experts=module.num_experts,
                    top_k=top_k,
                )
            )

        handles.append(experts.register_forward_pre_hook(hook))
    return handles


def seed_style_variant(bench: Bench, window: int, writer: TelemetryWriter) -> Variant:
    events: list[RoutingEvent] = []
    alert_history: dict = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def enter() -> None:
        handles.extend(seed_style_hooks(bench, events))

    def run() -> None:
        for _ in range(window):
            bench.train_step()
        writer.flush_events(events)
        writer.write_snapshot(
            SystemSnapshot.from_events(
                events,
                bench.step,
                run_id="seed-style",
                n_layers=bench.config.n_layers,
                alert_history=alert_history,
            )
        )
        events.clear()

    def leave() -> None:
        for handle in handles:
            handle.remove()
        handles.clear()

    return enter, run, leave


def time_variants(
    bench: Bench, variants: dict[str, Variant], repeats: int, warmup: int, window: int
) -> dict[str, float]:
    """Median seconds per step of each variant; variants take turns within each repeat."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(warmup + repeats):
        for name, (enter, run, leave) in variants.items():
            enter()
            bench.synchronize()
            start = time.perf_counter()
            run()
            bench.synchronize()
            elapsed = time.perf_counter() - start
            leave()
            if repeat >= warmup:
                samples[name].append(elapsed / window)
    return {name: statistics.median(values) for name, values in samples.items()}


# -- sync check ------------------------------------------------------------------------------------
@contextmanager
def sync_errors() -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode("error")`` inside the block, off after it."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def guard_capture_hooks(bench: Bench) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks turning sync errors on before ChronoMoE's hooks and off after them: around the pre-hooks of each
    experts module (capture), and from before the pre-hooks to after the forward hooks of each router (lens,
    bias selection; the router's own forward runs in between, under the guard too)."""
    handles = []

    def on(*_: object) -> None:
        torch.cuda.set_sync_debug_mode("error")

    def off(*_: object) -> None:
        torch.cuda.set_sync_debug_mode(0)

    for _, experts in bench.experts_modules():
        handles.append(experts.register_forward_pre_hook(on, prepend=True))
        handles.append(experts.register_forward_pre_hook(off))
    for router in bench.routers():
        handles.append(router.register_forward_pre_hook(on, prepend=True))
        handles.append(router.register_forward_hook(off))
    return handles


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def guarded_steps(bench: Bench, steps: int, after_step: Callable[[int], None]) -> str:
    """Run ``steps`` training steps with the capture hooks guarded; ``"pass"`` or ``"raised: <error>"``."""
    guards = guard_capture_hooks(bench)
    try:
        for _ in range(steps):
            step = bench.train_step()
            with sync_errors():
                after_step(step)
        bench.synchronize()
        return "pass"
    except RuntimeError as error:
        bench.optimizer.zero_grad(set_to_none=True)
        return f"raised: {first_line(error)}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
        for guard in guards:
            guard.remove()


def sync_check(bench: Bench, output_dir: str, steps: int = 3) -> dict[str, object]:
    controller = PressureController(mode="continuous", tolerance=0.0)
    monitor = Monitor("sync-check", output_dir, controller=controller)
    monitor.attach(bench.model)
    for _ in range(2):  # warm-up: recorder buffers, allocator, kernels, a first bias applied
        monitor.step(bench.train_step())
    monitor.snapshot(bench.step)
    recorder = guarded_steps(bench, steps, monitor.step)
    monitor.snapshot(bench.step)
    actuator = monitor.actuator
    assert actuator is not None
    acted = float(abs(actuator.read()).max()) > 0
    new_bias = actuator.read()
    new_bias[:, :2] += [0.01, -0.01]
    try:
        with sync_errors():
            actuator.apply(new_bias, new_bias.any(axis=1))
        apply = "pass"
    except RuntimeError as error:
        apply = f"raised: {first_line(error)}"
    bench.synchronize()
    monitor.close()

    events: list[RoutingEvent] = []
    handles = seed_style_hooks(bench, events)
    seed_style = guarded_steps(bench, 1, lambda step: None)
    for handle in handles:
        handle.remove()

    probe = torch.ones((), device=bench.device)
    try:
        with sync_errors():
            probe.item()
        item_control = "not caught"
    except RuntimeError:
        item_control = "caught"

    passed = recorder == "pass" and apply == "pass" and seed_style.startswith("raised") and item_control == "caught"
    return {
        "recorder_lens_and_bias_hooks": recorder,
        "actuator_apply": apply,
        "controller_acted": acted,
        "seed_style_hooks_control": seed_style,
        "item_control": item_control,
        "guarded_steps": steps,
        "verdict": "pass" if passed else "fail",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = "capture_gpu_sync_check" if args.sync_check else "capture_gpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit({"benchmark": name, "skipped": f"CUDA is not available (torch {torch.__version__}); nothing measured"})
        return 0
    if args.sync_check and device.type != "cuda":
        emit({"benchmark": name, "skipped": "--sync-check needs a CUDA device; nothing checked"})
        return 0

    config = model_config(args)
    bench = Bench(config, device)
    described = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": {
            "layers": config.n_layers,
            "experts": config.n_experts,
            "top_k": config.top_k,
            "hidden": config.hidden_size,
            "expert_hidden": config.expert_hidden_size,
            "heads": config.n_heads,
            "vocab": config.vocab_size,
            "batch": config.batch_size,
            "seq": config.seq_len,
            "capacity_factor": config.capacity_factor,
            "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        },
    }
    with tempfile.TemporaryDirectory() as output_dir:
        if args.sync_check:
            result = sync_check(bench, output_dir)
            emit({"benchmark": name, **described, **result})
            return 0 if result["verdict"] == "pass" else 1
        monitor = Monitor("recorder", output_dir)
        controlled = Monitor("controlled", output_dir, controller=PressureController(mode="continuous", tolerance=0.0))
        writer = TelemetryWriter("seed-style", output_dir)
        variants = {
            "baseline": baseline_variant(bench, args.window),
            "recorder": recorder_variant(bench, args.window, monitor),
            "controlled": recorder_variant(bench, args.window, controlled),
            "seed_style": seed_style_variant(bench, args.window, writer),
        }
        medians = time_variants(bench, variants, args.repeats, args.warmup, args.window)
        monitor.close()
        controlled.close()
        writer.close()
    emit(
        {
            "benchmark": name,
            **described,
            "steps_per_sample": args.window,
            "samples_per_variant": args.repeats,
            "ms_per_step": {variant: seconds * 1e3 for variant, seconds in medians.items()},
            "ratio_to_baseline": {
                variant: medians[variant] / medians["baseline"] for variant in ("recorder", "controlled", "seed_style")
            },
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
