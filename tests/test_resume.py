"""Resume: a training run killed at any step and resumed from its last checkpoint alerts, decides and acts exactly
as one never killed.

The run trains the demo's MoE language model (a smaller configuration) with
``monitor.attach(model)``, snapshots every ``SNAPSHOT_EVERY`` steps and
checkpoints every ``CHECKPOINT_EVERY`` steps (not a multiple: checkpoints fall
inside snapshot windows) with ``torch.save`` of the model, the optimizer and
``monitor.state_dict()``, read back with ``torch.load(weights_only=True)``.
The kill is simulated in-process: the loop stops at the kill step, every
object is dropped, and a new model, optimizer and Monitor are built from the
checkpoint file. The controlled variant runs a PressureController acting on
the router bias at every snapshot: its state and the bias travel in the
checkpoint too.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from chronomoe import AlertRules, Monitor
from chronomoe.controller import PressureController
from chronomoe.schemas import validate_run
from chronomoe.toy_model import DemoConfig, DemoMoEModel, make_corpus

CONFIG = DemoConfig(seq_len=16, batch_size=8, hidden_size=32, n_heads=2, n_layers=2, n_experts=4, expert_hidden_size=32)
STEPS = 40
SNAPSHOT_EVERY = 4
CHECKPOINT_EVERY = 5
RULES = AlertRules(neff_ratio=0.95, pre_top2=0.55, pre_persistence=2, confirm_top2=0.6, confirm_persistence=2)
"""Sensitive thresholds, so that this short run moves its layers through every state."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads make this tiny model ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> torch.Tensor:
    return make_corpus(CONFIG, seed=0, n_sequences=64)


WITHOUT_TIMES = {"timestamp": True, "transitions": {"__all__": {"timestamp"}}}


def published(snapshot) -> dict:
    """Everything a snapshot says (counts, metrics, alert states, streaks, transitions) but wall-clock times."""
    return snapshot.model_dump(mode="json", exclude=WITHOUT_TIMES)


def train(
    output_dir: Path,
    corpus: torch.Tensor,
    checkpoint: Path,
    *,
    resume: bool,
    kill_at: int | None = None,
    controlled: bool = False,
):
    """Train to ``STEPS`` (or stop after ``kill_at``), resuming from ``checkpoint`` when asked.

    Returns the snapshots published, the decisions published (with a
    PressureController when ``controlled``) and the final ``monitor.state_dict()``.
    """
    torch.manual_seed(0)
    model = DemoMoEModel(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    controller = PressureController(mode="continuous", tolerance=0.0, rules=RULES) if controlled else None
    monitor = Monitor(
        "run",
        output_dir,
        rules=RULES,
        lens=None,
        controller=controller,
        on_existing_run="resume" if resume else "refuse",
    )
    monitor.attach(model)
    first_step = 1
    if resume:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        monitor.load_state_dict(state["monitor"])
        first_step = state["step"] + 1
    snapshots, decisions = [], []
    monitor.bus.subscribe("snapshot", snapshots.append)
    monitor.bus.subscribe("decision", decisions.append)
    for step in range(first_step, STEPS + 1):
        rows = corpus[(step * CONFIG.batch_size) % (len(corpus) - CONFIG.batch_size) :][: CONFIG.batch_size]
        logits, _ = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step)
        if step % SNAPSHOT_EVERY == 0:
            monitor.snapshot(step, train_loss=loss.item())
        if step % CHECKPOINT_EVERY == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "monitor": monitor.state_dict(),
                "step": step,
            }
            torch.save(state, checkpoint)
        if step == kill_at:
            break
    final_state = monitor.state_dict()
    monitor.close()
    return snapshots, decisions, final_state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("uninterrupted")
    snapshots, _, state = train(folder, corpus, folder / "checkpoint.pt", resume=False)
    assert {t.dest.value for s in snapshots for t in s.transitions} == {"pre_collapse", "collapse_confirmed"}
    return snapshots, state


@pytest.fixture(scope="module")
def uninterrupted_controlled(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("uninterrupted-controlled")
    snapshots, decisions, state = train(folder, corpus, folder / "checkpoint.pt", resume=False, controlled=True)
    assert any(decision.applied for decision in decisions)
    return snapshots, decisions, state


@settings(max_examples=5, deadline=None)
@given(kill_at=st.integers(CHECKPOINT_EVERY, STEPS - 1))
def test_a_run_killed_at_any_step_and_resumed_from_its_checkpoint_alerts_as_if_never_killed(
    tmp_path_factory, corpus, uninterrupted, kill_at
):
    folder = tmp_path_factory.mktemp("killed")
    checkpoint = folder / "checkpoint.pt"
    before_kill, _, _ = train(folder, corpus, checkpoint, resume=False, kill_at=kill_at)
    gc.collect()  # the killed run's objects are gone
    checkpoint_step = kill_at - kill_at % CHECKPOINT_EVERY
    after_resume, _, final_state = train(folder, corpus, checkpoint, resume=True)

    expected_snapshots, expected_state = uninterrupted
    resumed = [s for s in before_kill if s.step <= checkpoint_step] + after_resume
    assert [published(s) for s in resumed] == [published(s) for s in expected_snapshots]
    assert final_state["banks"] == expected_state["banks"]
    assert validate_run(folder / "run").ok  # the killed attempt's records after the checkpoint are moved aside


@settings(max_examples=3, deadline=None)
@given(kill_at=st.integers(CHECKPOINT_EVERY, STEPS - 1))
def test_a_controlled_run_killed_and_resumed_makes_exactly_the_decisions_of_an_uninterrupted_one(
    tmp_path_factory, corpus, uninterrupted_controlled, kill_at
):
    folder = tmp_path_factory.mktemp("killed-controlled")
    checkpoint = folder / "checkpoint.pt"
    _, before_kill, _ = train(folder, corpus, checkpoint, resume=False, kill_at=kill_at, controlled=True)
    gc.collect()
    checkpoint_step = kill_at - kill_at % CHECKPOINT_EVERY
    _, after_resume, final_state = train(folder, corpus, checkpoint, resume=True, controlled=True)

    _, expected_decisions, expected_state = uninterrupted_controlled
    resumed = [d for d in before_kill if d.step <= checkpoint_step] + after_resume

    def without_time(decisions):
        return [d.model_dump(mode="json", exclude={"timestamp"}) for d in decisions]

    assert without_time(resumed) == without_time(expected_decisions)
    assert final_state["controller"] == expected_state["controller"]
    assert validate_run(folder / "run").ok
