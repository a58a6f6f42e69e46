"""The demo (``chronomoe demo``): its model follows the attach convention, its two runs show what they promise.

The runs use one torch thread so their trajectories do not depend on the
machine's core count (float sums are ordered by the thread split).
"""

from __future__ import annotations

import io
from contextlib import contextmanager, redirect_stdout

import pytest

torch = pytest.importorskip("torch")

from chronomoe import AlertState, InvalidInputError, Monitor, load_events, load_snapshots, load_transitions  # noqa: E402
from chronomoe.demo import BALANCED, COLLAPSE, DEFAULT_STEPS, main, run_demo, train_arm  # noqa: E402
from chronomoe.io import ALERTS_FILE  # noqa: E402
from chronomoe.toy_model import DemoConfig, DemoExperts, DemoMoEModel, make_corpus  # noqa: E402

FAST_STEPS = 200
"""Enough for the collapse run of seed 0 to confirm (first at step 100), about 15 s for both runs."""


@contextmanager
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Both runs of the demo, ``FAST_STEPS`` steps each: (exit code, stdout, output folder)."""
    output_dir = tmp_path_factory.mktemp("demo")
    with one_torch_thread(), redirect_stdout(io.StringIO()) as stdout:
        exit_code = run_demo(str(output_dir), steps=FAST_STEPS, seed=0, quiet=True)
    return exit_code, stdout.getvalue(), output_dir


def test_demo_exits_zero_when_both_runs_show_their_point(demo_run):
    exit_code, stdout, output_dir = demo_run
    assert exit_code == 0
    assert "demo-balanced: no alert" in stdout
    assert "demo-collapse: COLLAPSE_CONFIRMED" in stdout
    assert str(output_dir / "demo-balanced") in stdout and str(output_dir / "demo-collapse") in stdout


def test_balanced_run_raises_no_alert(demo_run):
    run_dir = demo_run[2] / BALANCED.run_id
    snapshots = load_snapshots(run_dir)
    assert len(snapshots) == FAST_STEPS // 10
    assert all(not snapshot.alerts and not snapshot.transitions for snapshot in snapshots)
    assert {layer.alert_state for snapshot in snapshots for layer in snapshot.layers} == {AlertState.NOMINAL}
    assert not (run_dir / ALERTS_FILE).exists()


def test_collapse_run_reaches_collapse_confirmed(demo_run):
    run_dir = demo_run[2] / COLLAPSE.run_id
    transitions = load_transitions(run_dir)
    confirmed = [t for t in transitions if t.dest is AlertState.COLLAPSE_CONFIRMED]
    assert confirmed, [f"{t.step} L{t.layer_id} {t.dest.value}" for t in transitions]
    first = confirmed[0]
    assert first.metrics["dead_expert_count"] >= 1 and first.metrics["top2_share"] > 0.85
    snapshot_transitions = [t for snapshot in load_snapshots(run_dir) for t in snapshot.transitions]
    assert [(t.step, t.layer_id, t.dest) for t in snapshot_transitions] == [
        (t.step, t.layer_id, t.dest) for t in transitions
    ]


@pytest.mark.parametrize("run_id", [BALANCED.run_id, COLLAPSE.run_id])
def test_run_folder_holds_one_event_per_step_and_layer_summing_to_the_batch(demo_run, run_id):
    config = DemoConfig()
    events = load_events(demo_run[2] / run_id)
    assert len(events) == FAST_STEPS * config.n_layers
    assert {(event.step, event.layer_id) for event in events} == {
        (step, layer) for step in range(1, FAST_STEPS + 1) for layer in range(config.n_layers)
    }
    tokens_per_step = config.batch_size * config.seq_len * config.top_k
    assert {event.token_count for event in events} == {tokens_per_step}


def test_same_seed_writes_the_same_routing_and_replaces_the_previous_run(tmp_path):
    config = DemoConfig()
    corpus = make_corpus(config, seed=3)

    def routing() -> list[tuple[int, int, list[int]]]:
        with one_torch_thread():
            train_arm(COLLAPSE, config, corpus, 20, 3, tmp_path, show_progress=False)
        return [(e.step, e.layer_id, e.expert_token_counts.tolist()) for e in load_events(tmp_path / COLLAPSE.run_id)]

    first, second = routing(), routing()
    assert len(first) == 20 * config.n_layers
    assert second == first


def test_attach_records_exactly_the_experts_the_router_chose():
    torch.manual_seed(0)
    config = DemoConfig(batch_size=2, seq_len=16)
    model = DemoMoEModel(config)
    chosen: dict[int, torch.Tensor] = {}
    for layer_id, layer in enumerate(model.layers):
        layer.mlp.gate.register_forward_hook(
            lambda module, args, output, layer_id=layer_id: chosen.__setitem__(layer_id, output[2])
        )
    monitor = Monitor("attach", lens=None, controller=None)
    attachment = monitor.attach(model)
    model(make_corpus(config, seed=0, n_sequences=2)[:, :-1])
    monitor.step(1)
    snapshot = monitor.snapshot(1)

    assert [layer.layer_id for layer in attachment.layers] == list(range(config.n_layers))
    assert {layer.n_experts for layer in attachment.layers} == {config.n_experts}
    for layer in snapshot.layers:
        expected = torch.bincount(chosen[layer.layer_id].reshape(-1), minlength=config.n_experts)
        assert layer.expert_token_counts.tolist() == expected.tolist()


def test_fixed_capacity_dispatch_equals_dropless_when_nothing_is_dropped():
    torch.manual_seed(0)
    tokens, top_k = 32, 2
    dropless = DemoExperts(DemoConfig(top_k=top_k))
    ample = DemoExperts(DemoConfig(top_k=top_k, capacity_factor=DemoConfig().n_experts / top_k))
    ample.load_state_dict(dropless.state_dict())
    hidden = torch.randn(tokens, DemoConfig().hidden_size)
    index = torch.randint(0, DemoConfig().n_experts, (tokens, top_k))
    weights = torch.rand(tokens, top_k)
    assert ample.capacity(tokens, top_k) == tokens
    torch.testing.assert_close(ample(hidden, index, weights), dropless(hidden, index, weights))


def test_fixed_capacity_gives_tokens_past_an_experts_capacity_no_output():
    torch.manual_seed(0)
    config = DemoConfig(capacity_factor=1.0)
    experts = DemoExperts(config)
    tokens = 16
    capacity = experts.capacity(tokens, top_k=1)
    hidden = torch.randn(tokens, config.hidden_size)
    everyone_to_expert_0 = torch.zeros(tokens, 1, dtype=torch.int64)
    output = experts(hidden, everyone_to_expert_0, torch.ones(tokens, 1))
    assert capacity == tokens // config.n_experts
    assert output[:capacity].abs().sum(dim=1).gt(0).all()
    assert output[capacity:].abs().sum() == 0


def test_the_model_imports_from_the_demo_as_the_readme_example_writes_them():
    import chronomoe.demo as demo
    import chronomoe.toy_model as toy_model

    for name in ("DemoConfig", "DemoMoEModel", "batch_at", "make_corpus", "make_optimizer"):
        assert getattr(demo, name) is getattr(toy_model, name), name


def test_run_demo_rejects_a_non_positive_step_count(tmp_path):
    with pytest.raises(InvalidInputError, match="steps=0"):
        run_demo(str(tmp_path), steps=0)


def test_module_entry_point_reports_bad_options_without_a_traceback(capsys, tmp_path):
    assert main(["--output-dir", str(tmp_path), "--steps", "-5"]) == 2
    assert "steps=-5" in capsys.readouterr().err


@pytest.mark.slow
def test_default_demo_shows_both_outcomes(tmp_path):
    with redirect_stdout(io.StringIO()):
        assert run_demo(str(tmp_path), steps=DEFAULT_STEPS, quiet=True) == 0
