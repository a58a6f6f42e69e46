"""Sinks and callbacks against the real libraries: TensorBoard, the transformers Trainer, Lightning."""

from __future__ import annotations

import pytest

from chronomoe import Monitor, load_events, load_snapshots
from chronomoe.integrations import stop_on_collapse

N_EXPERTS = 4


def tiny_mixtral():
    """A random 2-layer Mixtral (hidden 32, 4 experts, top-2): seconds to train on CPU."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=N_EXPERTS,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    return MixtralForCausalLM(config)


def token_batches(n_sequences: int = 32, length: int = 16):
    import torch

    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (n_sequences, length), generator=generator)
    return [{"input_ids": row, "labels": row} for row in tokens]


# -- stop_on_collapse ---------------------------------------------------------------------------
def test_stop_on_collapse_requests_a_stop_at_the_confirming_transition(condition_counts):
    from chronomoe import AlertRules

    monitor = Monitor("stop", lens=None, rules=AlertRules(pre_persistence=1, confirm_persistence=2))
    stop_on_collapse(monitor)
    collapsed = [condition_counts[(True, True)]]
    monitor.observe(collapsed, step=1)
    assert not monitor.should_stop
    monitor.observe(collapsed, step=2)
    assert monitor.should_stop and "layer 0 collapse_confirmed at step 2" in monitor.stop_reason


# -- TensorBoard ---------------------------------------------------------------------------------
def test_tensorboard_sink_writes_layer_scalars_and_transition_text(make_run, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from chronomoe.integrations.tensorboard import TensorBoardSink

    recorded = load_snapshots(make_run())  # the collapsing run, replayed into a live monitor
    log_dir = tmp_path / "tb"
    sink = TensorBoardSink(log_dir)
    monitor = Monitor("tb", lens=None)
    monitor.bus.connect(sink)
    for snapshot in recorded:
        monitor.observe([layer.expert_token_counts for layer in snapshot.layers], snapshot.step)
    sink.close()

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    neff = events.Scalars("chronomoe/n_effective/layer_2")
    assert [point.step for point in neff] == [snapshot.step for snapshot in recorded]
    assert [point.value for point in neff] == pytest.approx([s.layer(2).n_effective for s in recorded], rel=1e-6)
    assert [point.value for point in events.Scalars("chronomoe/dead_experts/layer_2")][-1] == 6
    assert [point.value for point in events.Scalars("chronomoe/top2_share/layer_0")] == pytest.approx(
        [s.layer(0).top2_share for s in recorded], rel=1e-6
    )
    states = [(point.step, point.value) for point in events.Scalars("chronomoe/alert_state/layer_2")]
    assert (states[6], states[10]) == ((28, 1.0), (44, 2.0))
    texts = events.Tensors("chronomoe/transitions/layer_2/text_summary")
    assert [point.step for point in texts] == [28, 44]
    assert b"pre_collapse -> collapse_confirmed (confirm)" in texts[1].tensor_proto.string_val[0]


# -- transformers Trainer ---------------------------------------------------------------------
def _trainer(tmp_path, monitor, **callback_options):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from chronomoe.integrations.hf_trainer import ChronoMoECallback

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(
        model=tiny_mixtral(),
        args=args,
        train_dataset=token_batches(),
        callbacks=[ChronoMoECallback(monitor, **callback_options)],
    )


def test_trainer_callback_records_every_step_and_snapshots_at_the_logging_cadence(tmp_path):
    with Monitor("hf", output_dir=tmp_path, lens=None) as monitor:
        _trainer(tmp_path, monitor).train()
    snapshots = load_snapshots(tmp_path / "hf")
    events = load_events(tmp_path / "hf")

    assert [snapshot.step for snapshot in snapshots] == [2, 4, 6]
    assert all(snapshot.train_loss is not None and snapshot.train_loss > 0 for snapshot in snapshots)
    assert sorted({(event.step, event.layer_id) for event in events}) == [
        (step, layer) for step in range(1, 7) for layer in (0, 1)
    ]
    # 4 sequences x 16 tokens x top-2 routed tokens per layer and step
    assert {event.token_count for event in events} == {4 * 16 * 2}
    assert all(layer.n_experts == N_EXPERTS for snapshot in snapshots for layer in snapshot.layers)


def test_trainer_callback_stops_training_when_the_monitor_asks(tmp_path):
    monitor = Monitor("hf-stop", lens=None)
    monitor.bus.subscribe("snapshot", lambda snapshot: monitor.request_stop("test"))
    trainer = _trainer(tmp_path, monitor)
    trainer.train()
    assert trainer.state.global_step == 2
    assert monitor.last_snapshot.step == 2


# -- Lightning -----------------------------------------------------------------------------------
def _lightning_fit(tmp_path, monitor, max_steps: int = 4):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from chronomoe.integrations.lightning import ChronoMoELightningCallback

    class TinyMoEModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_mixtral()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    trainer = pl.Trainer(
        max_steps=max_steps,
        log_every_n_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[ChronoMoELightningCallback(monitor)],
    )
    trainer.fit(TinyMoEModule(), DataLoader(token_batches(), batch_size=4))
    return trainer


def test_lightning_callback_records_every_step_and_snapshots_every_n_steps(tmp_path):
    with Monitor("pl", output_dir=tmp_path, lens=None) as monitor:
        _lightning_fit(tmp_path, monitor)
    snapshots = load_snapshots(tmp_path / "pl")
    assert [snapshot.step for snapshot in snapshots] == [2, 4]
    assert all(snapshot.train_loss is not None for snapshot in snapshots)
    assert sorted({event.step for event in load_events(tmp_path / "pl")}) == [1, 2, 3, 4]


def test_lightning_callback_stops_fitting_when_the_monitor_asks(tmp_path):
    monitor = Monitor("pl-stop", lens=None)
    monitor.bus.subscribe("snapshot", lambda snapshot: monitor.request_stop("test"))
    trainer = _lightning_fit(tmp_path, monitor, max_steps=8)
    assert trainer.global_step == 2
