"""Shared fixtures: record factories, counts that make alert conditions true, reference models.

The reference models (``reference_metrics``, ``reference_alert_run``) are written
here from the seed's and the issues' prose in plain Python, independently of
the library, so tests can compare the library against them.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from chronomoe import AlertRules, InvalidInputError, RoutingEvent

CONDITION_RULES = {"neff_ratio": 0.1, "pre_top2": 0.9, "confirm_top2": 0.5}
"""Thresholds under which every (pre, collapse) combination of CONDITION_COUNTS is reachable.

With the seed's defaults COLLAPSE_CONFIRMED's condition implies PRE_COLLAPSE's
(Top2 > 0.85 implies Top2 > 0.75); these thresholds decouple them.
"""

CONDITION_COUNTS: dict[tuple[bool, bool], list[int]] = {
    # (pre, collapse): 8-expert counts, 100 tokens each except the uniform row.
    (False, False): [10, 10, 10, 10, 10, 10, 10, 10],  # Top2 0.25, Neff 8, no dead
    (True, False): [46, 46, 1, 1, 1, 1, 1, 3],  # Top2 0.92, no dead expert
    (False, True): [30, 30, 10, 10, 10, 10, 0, 0],  # Top2 0.60, Neff 5.17, 2 dead
    (True, True): [50, 45, 5, 0, 0, 0, 0, 0],  # Top2 0.95, 5 dead
}
"""8-expert counts realising each (pre, collapse) pair under CONDITION_RULES' thresholds.

Under the default rules the same rows give: (False, False) and (False, True)
no condition; (True, False) PRE_COLLAPSE's only; (True, True) both.
"""

NO_DATA_COUNTS = [0] * 8


@pytest.fixture(scope="session")
def condition_counts() -> dict[tuple[bool, bool], list[int]]:
    """CONDITION_COUNTS: (pre, collapse) -> one 8-expert layer's window counts."""
    return CONDITION_COUNTS


@pytest.fixture(scope="session")
def rows() -> SimpleNamespace:
    """CONDITION_COUNTS' rows by name, for tests under the default (seed) rules.

    ``balanced``: no condition; ``concentrated``: PRE_COLLAPSE's only;
    ``collapsing``: both; ``dead_but_spread``: dead experts but no condition;
    ``no_data``: no token dispatched.
    """
    return SimpleNamespace(
        balanced=CONDITION_COUNTS[(False, False)],
        concentrated=CONDITION_COUNTS[(True, False)],
        collapsing=CONDITION_COUNTS[(True, True)],
        dead_but_spread=CONDITION_COUNTS[(False, True)],
        no_data=NO_DATA_COUNTS,
    )


@pytest.fixture(scope="session")
def condition_rules() -> Callable[..., AlertRules]:
    """``condition_rules(**persistences)``: AlertRules with CONDITION_RULES' thresholds."""

    def make(**persistences: int) -> AlertRules:
        return AlertRules(**CONDITION_RULES, **persistences)

    return make


@pytest.fixture(scope="session")
def counts_for() -> Callable[[Iterable[tuple[bool, bool, bool]]], list[list[int]]]:
    """``counts_for([(pre, collapse, no_data), ...])``: one counts row per layer (CONDITION_RULES)."""

    def make(conditions: Iterable[tuple[bool, bool, bool]]) -> list[list[int]]:
        return [
            NO_DATA_COUNTS if no_data else CONDITION_COUNTS[(pre, collapse)] for pre, collapse, no_data in conditions
        ]

    return make


@pytest.fixture(scope="session")
def make_event() -> Callable[..., RoutingEvent]:
    """``make_event(counts, **fields)``: a RoutingEvent with plain defaults for the other fields."""

    def make(counts: Any, **fields: Any) -> RoutingEvent:
        defaults: dict[str, Any] = {
            "run_id": "run",
            "step": 0,
            "mode": "TRAIN",
            "layer_id": 0,
            "n_experts": len(counts),
            "top_k": 1,
        }
        return RoutingEvent(**{**defaults, **fields, "expert_token_counts": counts})

    return make


@pytest.fixture(scope="session")
def assert_rejected() -> Callable[..., Exception]:
    """``assert_rejected(build, *fragments)``: ``build()`` raises a validation error naming each fragment.

    Fragments are the field's name and the rejected value as the message
    prints them; the error is returned for further checks.
    """

    def check(build: Callable[[], Any], *fragments: str) -> Exception:
        with pytest.raises((ValidationError, InvalidInputError)) as raised:
            build()
        message = str(raised.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in error message {message!r}"
        return raised.value

    return check


def _reference_metrics(counts: list[int]) -> dict[str, float | int | None]:
    """One layer's metrics from the seed's definitions, in plain Python floats.

    ``None`` metrics (and zero dead counts) for a layer without tokens. Gini is
    the mean absolute difference over twice the mean, a different formula from
    the library's rank form.
    """
    total = sum(counts)
    n = len(counts)
    if total == 0:
        return {
            "token_count": 0,
            "entropy": None,
            "n_effective": None,
            "top2_share": None,
            "gini": None,
            "dead_expert_count": 0,
            "nearly_dead_count": 0,
            "no_data": True,
        }
    shares = [count / total for count in counts]
    entropy = -sum(share * math.log(share) for share in shares if share > 0)
    mean = 1 / n
    gini = sum(abs(a - b) for a in shares for b in shares) / (2 * n * n * mean)
    return {
        "token_count": total,
        "entropy": entropy,
        "n_effective": math.exp(entropy),
        "top2_share": sum(sorted(shares, reverse=True)[:2]),
        "gini": gini,
        "dead_expert_count": sum(1 for share in shares if share == 0),
        "nearly_dead_count": sum(1 for share in shares if 0 < share < 0.01),
        "no_data": False,
    }


@pytest.fixture(scope="session")
def reference_metrics() -> Callable[[list[int]], dict[str, float | int | None]]:
    """Plain-Python metrics of one layer's counts (see ``_reference_metrics``)."""
    return _reference_metrics


def _reference_alert_run(conditions: Iterable[tuple[bool, bool, bool]], rules: AlertRules) -> list[dict[str, Any]]:
    """One layer's alert state and streaks after each snapshot, from the issue's prose.

    ``conditions`` are (pre, collapse, no_data) per snapshot. Rules, written
    without looking at the library's code:

    * a no-data snapshot changes nothing;
    * each streak counts trailing consecutive data snapshots where its
      condition held (healthy: the current state's condition failed, where
      collapse_confirmed is held by the collapse condition and the other
      states by either condition);
    * then at most one move, first that applies: collapse persisted and not
      confirmed -> collapse_confirmed; pre persisted and nominal ->
      pre_collapse; healthy persisted and not nominal -> one step down,
      which from collapse_confirmed lands in pre_collapse only if pre
      persisted; a move restarts the healthy streak.
    """
    state, pre_streak, collapse_streak, healthy_streak = "nominal", 0, 0, 0
    history = []
    for pre, collapse, no_data in conditions:
        if not no_data:
            pre_streak = pre_streak + 1 if pre else 0
            collapse_streak = collapse_streak + 1 if collapse else 0
            holding = collapse if state == "collapse_confirmed" else (pre or collapse)
            healthy_streak = 0 if holding else healthy_streak + 1
            pre_persisted = pre_streak >= rules.pre_persistence
            before = state
            if collapse_streak >= rules.confirm_persistence and state != "collapse_confirmed":
                state = "collapse_confirmed"
            elif pre_persisted and state == "nominal":
                state = "pre_collapse"
            elif healthy_streak >= rules.resolve_persistence and state != "nominal":
                state = "pre_collapse" if state == "collapse_confirmed" and pre_persisted else "nominal"
            if state != before:
                healthy_streak = 0
        history.append(
            {
                "state": state,
                "pre_streak": pre_streak,
                "collapse_streak": collapse_streak,
                "healthy_streak": healthy_streak,
            }
        )
    return history


@pytest.fixture(scope="session")
def reference_alert_run() -> Callable[..., list[dict[str, Any]]]:
    """``reference_alert_run(conditions, rules)``: expected state dicts after each snapshot."""
    return _reference_alert_run


def _write_collapsing_run(
    output_dir: Any,
    run_id: str = "collapse",
    *,
    n_layers: int = 3,
    n_experts: int = 8,
    n_snapshots: int = 12,
    steps_per_snapshot: int = 4,
    tokens_per_step: int = 64,
    collapsing_layers: Iterable[int] = (2,),
    infer: bool = False,
    rules: AlertRules | None = None,
    seed: int = 0,
) -> Any:
    """Record a synthetic run with ``Monitor.observe`` and return its run folder.

    Every layer routes ``tokens_per_step`` tokens per step. Healthy layers draw
    experts uniformly; a collapsing layer's routing moves linearly, over the
    first half of the snapshots, from uniform to experts 0 and 1 only (shares
    0.55 and 0.45), after which the other experts are dead. Under the default
    rules a collapsing layer of the default run (snapshots every 4 steps up to
    step 48) reaches pre_collapse at step 28 and collapse_confirmed at step 44. With
    ``infer=True`` every window also holds INFER events of the same layers,
    snapshotted with ``mode="INFER"``. ``rules`` go to the Monitor (default rules when None).
    """
    import numpy as np

    from chronomoe import Monitor

    rng = np.random.default_rng(seed)
    uniform = np.full(n_experts, 1.0 / n_experts)
    collapsed = np.zeros(n_experts)
    collapsed[:2] = [0.55, 0.45]
    collapsing = set(collapsing_layers)
    # No lens: it writes nothing, and the default one would import torch.
    with Monitor(run_id, output_dir=output_dir, model_name="SyntheticMoE", rules=rules, lens=None) as monitor:
        for snapshot_index in range(n_snapshots):
            progress = min(1.0, snapshot_index / (n_snapshots / 2))
            steps = range(snapshot_index * steps_per_snapshot + 1, (snapshot_index + 1) * steps_per_snapshot + 1)
            windows: dict[str, list[RoutingEvent]] = {"TRAIN": [], "INFER": []}
            for mode in ("TRAIN", "INFER") if infer else ("TRAIN",):
                for step in steps:
                    for layer_id in range(n_layers):
                        shares = (1 - progress) * uniform + progress * collapsed if layer_id in collapsing else uniform
                        windows[mode].append(
                            RoutingEvent(
                                run_id=run_id,
                                step=step,
                                mode=mode,
                                layer_id=layer_id,
                                n_experts=n_experts,
                                top_k=1,
                                expert_token_counts=rng.multinomial(tokens_per_step, shares),
                                timestamp=1_700_000_000.0 + step,
                            )
                        )
            monitor.observe(windows["TRAIN"], steps[-1], train_loss=2.0 + 0.1 * snapshot_index)
            if infer:
                monitor.observe(windows["INFER"], steps[-1], val_loss=2.5, mode="INFER")
    return output_dir / run_id


@pytest.fixture
def make_run(tmp_path) -> Callable[..., Any]:
    """``make_run(run_id="collapse", **options)``: a recorded run folder under tmp_path.

    See ``_write_collapsing_run`` for the options.
    """

    def make(run_id: str = "collapse", **options: Any) -> Any:
        return _write_collapsing_run(tmp_path / "runs", run_id, **options)

    return make


@pytest.fixture
def child_exit_code() -> Callable[..., int | None]:
    """``child_exit_code(pid, seconds=30)``: the exit code of the forked child ``pid`` once it ends, or ``None``
    when it has not ended within ``seconds`` (it is then killed), so that a child that hangs fails the test
    instead of hanging it."""

    def wait(pid: int, seconds: float = 30) -> int | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None

    return wait
