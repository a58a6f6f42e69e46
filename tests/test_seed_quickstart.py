"""The seed documents' code runs as written: the README quick start and the phase-1 training-loop pattern."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from chronomoe import load_events, load_snapshots


def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    used_capacity_tensor = torch.tensor([30, 25, 20, 10, 8, 4, 2, 1])

    # --- the seed README's quick start, with `events=[event]` and `alert_history={}` ---
    from chronomoe import RoutingEvent, SystemSnapshot, TelemetryWriter
    from chronomoe.metrics import compute_entropy, compute_n_effective

    # Create telemetry writer
    writer = TelemetryWriter(run_id="my_run", output_dir="outputs")

    # Log routing events from your MoE forward pass
    event = RoutingEvent.from_router_output(
        run_id="my_run",
        step=100,
        mode="TRAIN",
        layer_id=0,
        used_capacity=used_capacity_tensor,  # [n_experts]
        n_experts=8,
        top_k=2,
    )

    # Create periodic snapshots with alert detection
    snapshot = SystemSnapshot.from_events(
        events=[event],
        step=100,
        train_loss=2.5,
        val_loss=2.8,
        run_id="my_run",
        model_name="MyMoE",
        n_layers=4,
        alert_history={},
    )

    # Check for collapse alerts
    if snapshot.alerts:
        print("WARNING:", snapshot.alerts)
    # --- end of the quick start ---

    assert (tmp_path / "outputs" / "my_run").is_dir()
    assert writer.events_path == Path("outputs", "my_run", "routing_events.jsonl")
    assert (event.token_count, event.active_experts) == (100, tuple(range(8)))
    assert [layer.no_data for layer in snapshot.layers] == [False, True, True, True]
    assert snapshot.alerts == [] and capsys.readouterr().out == ""
    layer = snapshot.layers[0]
    assert layer.n_effective == compute_n_effective(compute_entropy(layer.utilization_shares))


def test_the_quick_start_prints_a_warning_once_collapse_persists(capsys):
    from chronomoe import RoutingEvent, SystemSnapshot

    alert_history: dict = {}
    for step in range(100, 400, 100):
        event = RoutingEvent.from_router_output(
            run_id="my_run",
            step=step,
            mode="TRAIN",
            layer_id=0,
            used_capacity=torch.tensor([60, 40, 0, 0, 0, 0, 0, 0]),
            n_experts=8,
            top_k=2,
        )
        snapshot = SystemSnapshot.from_events(
            events=[event],
            step=step,
            train_loss=2.5,
            val_loss=2.8,
            run_id="my_run",
            model_name="MyMoE",
            n_layers=4,
            alert_history=alert_history,
        )
        if snapshot.alerts:
            print("WARNING:", snapshot.alerts)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("WARNING: ['PRE_COLLAPSE: layer 0")


class ToyRouter(torch.nn.Module):
    """Top-k token router over 8 experts; ``bias`` skews it (a large bias on two experts is a binary collapse)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(16, 8, bias=False)
        self.register_buffer("bias", bias)

    def forward(self, tokens: torch.Tensor, top_k: int = 2) -> torch.Tensor:
        """``used_capacity`` ``[8]``: tokens dispatched to each expert."""
        chosen = (self.gate(tokens) + self.bias).topk(top_k, dim=-1).indices
        return torch.bincount(chosen.flatten(), minlength=8)


def test_the_phase_1_training_loop_pattern(tmp_path, caplog):
    from chronomoe import RoutingEvent, SystemSnapshot, TelemetryWriter

    torch.manual_seed(0)
    run_id, model_name, n_moe_layers, eval_interval, tokens_per_step = "loop", "ToyMoE", 2, 5, 64
    routers = [ToyRouter(torch.zeros(8)), ToyRouter(torch.tensor([20.0, 20.0, 0, 0, 0, 0, 0, 0]))]
    writer = TelemetryWriter(run_id=run_id, output_dir=tmp_path)
    manager = SimpleNamespace(routing_events=[])
    alert_history: dict = {}
    logger = logging.getLogger("training")
    snapshots, buffered = [], []

    with caplog.at_level(logging.WARNING, logger="training"):
        for step in range(1, 31):
            tokens = torch.randn(tokens_per_step, 16)
            train_loss = 3.0 - step / 30
            for layer_id, router in enumerate(routers):
                manager.routing_events.append(
                    RoutingEvent.from_router_output(
                        run_id=run_id,
                        step=step,
                        mode="TRAIN",
                        layer_id=layer_id,
                        used_capacity=router(tokens),
                        n_experts=8,
                        top_k=2,
                    )
                )
            # --- the seed's integration pattern ---
            if step % eval_interval == 0:
                # Flush accumulated events
                writer.flush_events(manager.routing_events)

                # Create snapshot
                snapshot = SystemSnapshot.from_events(
                    events=manager.routing_events,
                    step=step,
                    train_loss=train_loss,
                    val_loss=train_loss + 0.1,
                    run_id=run_id,
                    model_name=model_name,
                    n_layers=n_moe_layers,
                    alert_history=alert_history,
                )

                # Log alerts
                if snapshot.alerts:
                    for alert in snapshot.alerts:
                        logger.warning(alert)

                # Not in the seed's pattern: keep the snapshot and the buffer size for the assertions.
                writer.write_snapshot(snapshot)
                snapshots.append(snapshot)
                buffered.append(len(manager.routing_events))

                # Clear buffer
                manager.routing_events.clear()
            # --- end of the pattern ---
    writer.close()

    assert buffered == [eval_interval * n_moe_layers] * 6
    assert len(load_events(tmp_path / run_id)) == 30 * n_moe_layers
    assert load_snapshots(tmp_path / run_id) == snapshots
    window_tokens = eval_interval * tokens_per_step * 2  # top-2: each token is dispatched twice
    assert all(layer.token_count == window_tokens for s in snapshots for layer in s.layers)
    alert_names = [record.getMessage().split(":")[0] for record in caplog.records]
    assert alert_names == ["PRE_COLLAPSE"] * 2 + ["COLLAPSE_CONFIRMED"] * 2
    assert all("layer 1" in record.getMessage() for record in caplog.records)
    assert [s.step for s in snapshots if s.alerts] == [15, 20, 25, 30]
