"""The W&B, MLflow and trackio sinks against the real packages, offline, reading back what each one stored:
W&B's offline run file, MLflow's SQLite store through its client, trackio's SQLite database through its storage.

The run used throughout: layer 0 balanced, layer 1 collapsing, a snapshot every 10 steps; under the default
rules layer 1 becomes pre_collapse at step 30 and collapse_confirmed at step 50.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import orjson
import pytest

from chronomoe import Monitor, SystemSnapshot
from chronomoe.integrations.trackers import CURRENT

STEPS = [10, 20, 30, 40, 50]
EXPECTED_ALERTS = [
    ("ChronoMoE layer 1: pre_collapse", "WARN", 30),
    ("ChronoMoE layer 1: collapse_confirmed", "ERROR", 50),
]
KEYS_PER_SNAPSHOT = 7 * 2 + 3 * 7 + 2
"""Scalar keys of a 2-layer snapshot with the default options (see tests/test_trackers.py)."""


def read_json(path: str):
    return orjson.loads(Path(path).read_bytes())


def feed(monitor: Monitor, rows, steps=STEPS) -> list[SystemSnapshot]:
    return [monitor.observe([rows.balanced, rows.collapsing], step=step) for step in steps]


# -- W&B -----------------------------------------------------------------------------------------------
@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline in tmp_path (no network, no key, nothing written elsewhere); every run finished afterwards."""
    wandb = pytest.importorskip("wandb")
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_PROJECT", "chronomoe-tests")
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # wandb keeps its settings (WANDB_DIR among them) for the process until torn down


def test_wandb_sink_stores_scalars_histograms_alerts_and_the_manifest_in_its_offline_run(wandb_offline, rows):
    from wandb_offline import offline_runs, read_offline_run

    from chronomoe.integrations.wandb import WandbSink

    monitor = Monitor("wb", lens=None)
    sink = WandbSink(init_options={"dir": str(wandb_offline)}, run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        snapshots = feed(monitor, rows)
    sink.close()

    (run_dir,) = offline_runs(wandb_offline)
    stored = read_offline_run(run_dir)
    assert [row["_step"] for row in stored.history] == STEPS
    assert [row["chronomoe/n_effective/layer_1"] for row in stored.history] == pytest.approx(
        [snapshot.layer(1).n_effective for snapshot in snapshots]
    )
    assert stored.history[-1]["chronomoe/alert_state/layer_1"] == 2
    histogram = stored.history[-1]["chronomoe/expert_load/layer_1"]
    assert histogram["_type"] == "histogram" and histogram["bins"] == list(range(9))
    assert histogram["values"] == pytest.approx([0.5, 0.45, 0.05, 0, 0, 0, 0, 0])
    logged = {key for row in stored.history for key in row if not key.startswith("_")}
    assert len(logged) == KEYS_PER_SNAPSHOT + 2  # and one histogram per layer
    assert [(alert["title"], alert["level"]) for alert in stored.alerts] == [alert[:2] for alert in EXPECTED_ALERTS]
    assert "step 50: layer 1 pre_collapse -> collapse_confirmed" in stored.alerts[1]["text"]
    assert stored.config["chronomoe"]["run_id"] == "wb"
    assert stored.config["chronomoe"]["monitor_config"]["underuse_ratio"] == 0.1


def test_wandb_sink_joins_the_transformers_run_on_its_train_global_step_axis(wandb_offline, tmp_path):
    pytest.importorskip("transformers")
    import wandb
    from test_integrations import tiny_mixtral, token_batches
    from transformers import Trainer, TrainingArguments
    from wandb_offline import offline_runs, read_offline_run

    from chronomoe.integrations.hf_trainer import ChronoMoECallback
    from chronomoe.integrations.wandb import TRANSFORMERS_STEP_METRIC, WandbSink

    monitor = Monitor("hf-wandb", lens=None)
    sink = WandbSink(run=CURRENT, step_metric=TRANSFORMERS_STEP_METRIC, run_config=monitor.manifest())
    monitor.bus.connect(sink)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=4,
        report_to=["wandb"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(
        model=tiny_mixtral(), args=args, train_dataset=token_batches(), callbacks=[ChronoMoECallback(monitor)]
    ).train()
    wandb.finish()

    (run_dir,) = offline_runs(wandb_offline)
    stored = read_offline_run(run_dir)
    ours = [row for row in stored.history if "chronomoe/n_effective/layer_0" in row]
    theirs = [row for row in stored.history if "train/loss" in row]
    assert [row["train/global_step"] for row in ours] == [row["train/global_step"] for row in theirs] == [2, 4, 6]
    # No row was logged with step=: W&B's own step counts rows one by one, and no value was dropped.
    assert [row["_step"] for row in stored.history] == list(range(len(stored.history)))
    axes = {metric.glob_name: metric.step_metric for metric in stored.metrics if metric.glob_name}
    assert axes["chronomoe/*"] == "train/global_step"
    assert stored.config["chronomoe"]["run_id"] == "hf-wandb" and "learning_rate" in stored.config


# -- MLflow --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite tracking store for the module (creating its tables takes seconds); each test its experiment."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables
    return uri


def mlflow_sink(mlflow_store, tmp_path, **options):
    from chronomoe.integrations.mlflow import MLflowSink

    return MLflowSink(
        tracking_uri=mlflow_store,
        experiment_name=f"chronomoe-{uuid.uuid4().hex}",
        artifact_location=(tmp_path / "artifacts").as_uri(),
        **options,
    )


def test_mlflow_sink_stores_metrics_a_histogram_artifact_alert_tags_and_manifest_params(mlflow_store, tmp_path, rows):
    monitor = Monitor("ml", lens=None)
    sink = mlflow_sink(mlflow_store, tmp_path, run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        snapshots = feed(monitor, rows)
    sink.close()

    client = sink.client
    history = client.get_metric_history(sink.run_id, "chronomoe/n_effective/layer_1")
    assert [point.step for point in history] == STEPS
    assert [point.value for point in history] == pytest.approx([s.layer(1).n_effective for s in snapshots])
    run = client.get_run(sink.run_id)
    assert len(run.data.metrics) == KEYS_PER_SNAPSHOT
    assert run.info.status == "FINISHED"
    assert run.data.tags["chronomoe/alert_state/layer_1"] == "collapse_confirmed"
    assert run.data.tags["chronomoe/alert_state"] == "collapse_confirmed"
    assert run.data.tags["chronomoe/last_alert"].startswith("ERROR: ChronoMoE layer 1: collapse_confirmed: step 50")
    assert run.data.params["chronomoe.run_id"] == "ml"
    assert run.data.params["chronomoe.monitor_config.rules.confirm_persistence"] == "5"
    stored = read_json(client.download_artifacts(sink.run_id, "chronomoe/expert_load/step_000000050.json"))
    assert stored["step"] == 50 and stored["mode"] == "TRAIN"
    assert stored["histograms"]["chronomoe/expert_load/layer_1"]["values"] == pytest.approx(
        [0.5, 0.45, 0.05, 0, 0, 0, 0, 0]
    )
    manifest = read_json(client.download_artifacts(sink.run_id, "chronomoe/run_manifest.json"))
    assert manifest["chronomoe"]["monitor_config"]["underuse_ratio"] == 0.1


def test_mlflow_sink_joins_the_active_run_and_leaves_it_running(mlflow_store, tmp_path, rows, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    experiment = mlflow.create_experiment(f"owner-{uuid.uuid4().hex}", artifact_location=(tmp_path / "a").as_uri())
    monitor = Monitor("ml-join", lens=None)
    with mlflow.start_run(experiment_id=experiment) as owner:
        sink = mlflow_sink(mlflow_store, tmp_path, run=CURRENT)
        monitor.bus.connect(sink)
        for step in STEPS:
            mlflow.log_metric("train/loss", 1.0 / step, step=step)  # what transformers' MLflowCallback does
            monitor.observe([rows.balanced, rows.collapsing], step=step)
        sink.close()
        assert sink.client.get_run(owner.info.run_id).info.status == "RUNNING"
    history = sink.client.get_metric_history(owner.info.run_id, "chronomoe/top2_share/layer_1")
    assert [point.step for point in history] == STEPS


def test_mlflow_sink_keeps_the_params_a_resumed_run_already_holds_and_says_so(mlflow_store, tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from chronomoe.integrations.mlflow import MLflowSink

    client = MlflowClient(mlflow_store)
    experiment = client.create_experiment(f"resume-{uuid.uuid4().hex}", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_param(run_id, "chronomoe.created_at", "1.0")
    with caplog.at_level(logging.WARNING, logger="chronomoe.integrations.mlflow"):
        MLflowSink(run=run_id, tracking_uri=mlflow_store, run_config={"created_at": 2.0, "run_id": "again"})
    params = client.get_run(run_id).data.params
    assert params == {"chronomoe.created_at": "1.0", "chronomoe.run_id": "again"}
    assert "keeps its params ['chronomoe.created_at']" in caplog.text


def test_mlflow_stores_429_keys_for_58_layers_of_256_experts_by_default(mlflow_store, tmp_path):
    import numpy as np

    monitor = Monitor("ml-58", lens=None)
    sink = mlflow_sink(mlflow_store, tmp_path)
    monitor.bus.connect(sink)
    monitor.observe(np.random.default_rng(0).integers(1, 1000, size=(58, 256)), step=1)
    assert len(sink.client.get_run(sink.run_id).data.metrics) == 429


def test_mlflow_sink_splits_more_than_1000_metrics_into_batches_mlflow_accepts(mlflow_store, tmp_path):
    monitor = Monitor("ml-wide", lens=None)
    sink = mlflow_sink(mlflow_store, tmp_path, per_expert=True, histogram_every=None)
    monitor.bus.connect(sink)
    monitor.observe([[1] * 300] * 4, step=1)  # 4 layers x 300 experts: 1,200 per-expert keys
    assert len(sink.client.get_run(sink.run_id).data.metrics) == 4 * 300 + 4 * 7 + 3 * 7 + 2


def test_a_tracker_that_fails_never_stops_the_monitor_the_bus_logs_and_counts_it(mlflow_store, tmp_path, rows, caplog):
    monitor = Monitor("ml-fail", lens=None)
    sink = mlflow_sink(mlflow_store, tmp_path)
    monitor.bus.connect(sink)
    sink.client.delete_run(sink.run_id)  # MLflow now refuses every write to it
    with caplog.at_level(logging.ERROR, logger="chronomoe.bus"):
        snapshots = feed(monitor, rows)
    assert [snapshot.step for snapshot in snapshots] == STEPS
    assert monitor.bus.errors == len(STEPS) + len(EXPECTED_ALERTS)  # every snapshot and every transition
    assert "handler chronomoe.integrations.trackers.TrackerSink.on_snapshot failed" in caplog.text
    assert "must be in the 'active' state" in caplog.text


# -- trackio -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trackio_storage(tmp_path_factory):
    """trackio writing to a temporary folder: TRACKIO_DIR must be set before trackio is first imported."""
    folder = tmp_path_factory.mktemp("trackio")
    previous = os.environ.get("TRACKIO_DIR")
    os.environ["TRACKIO_DIR"] = str(folder)
    try:
        trackio = pytest.importorskip("trackio")
    finally:
        if previous is None:
            del os.environ["TRACKIO_DIR"]
        else:
            os.environ["TRACKIO_DIR"] = previous
    from trackio.sqlite_storage import TRACKIO_DIR, SQLiteStorage

    assert folder == TRACKIO_DIR, "trackio was imported before this module's fixture: its folder is not temporary"
    yield SQLiteStorage
    trackio.context_vars.current_run.set(None)


LOCAL_ONLY = {"auto_log_cpu": False, "auto_log_gpu": False, "embed": False}


def test_trackio_sink_stores_scalars_histograms_alerts_and_the_manifest_in_its_database(trackio_storage, rows):
    from chronomoe.integrations.trackio import TrackioSink

    monitor = Monitor("tr", lens=None)
    project = f"p{uuid.uuid4().hex[:8]}"
    sink = TrackioSink(init_options={"project": project, "name": "tr", **LOCAL_ONLY}, run_config=monitor.manifest())
    with monitor.bus.connect(sink):
        snapshots = feed(monitor, rows)
    sink.close()

    logs = trackio_storage.get_logs(project, "tr")
    assert [log["step"] for log in logs] == STEPS
    assert [log["chronomoe/n_effective/layer_1"] for log in logs] == pytest.approx(
        [snapshot.layer(1).n_effective for snapshot in snapshots]
    )
    histogram = logs[-1]["chronomoe/expert_load/layer_1"]
    assert histogram["_type"] == "trackio.histogram" and histogram["bins"] == list(range(9))
    assert histogram["values"] == pytest.approx([0.5, 0.45, 0.05, 0, 0, 0, 0, 0])
    alerts = trackio_storage.get_alerts(project, run_name="tr")
    stored_alerts = [(alert["title"], alert["level"].upper(), alert["step"]) for alert in alerts]
    assert sorted(stored_alerts, key=lambda alert: alert[2]) == EXPECTED_ALERTS
    config = trackio_storage.get_run_config(project, "tr")
    assert config["chronomoe"]["run_id"] == "tr"


def test_trackio_sink_joins_a_run_logged_without_steps_without_moving_its_steps(trackio_storage, rows):
    import trackio

    from chronomoe.integrations.trackio import TRANSFORMERS_STEP_METRIC, TrackioSink

    monitor = Monitor("tr-join", lens=None)
    project = f"p{uuid.uuid4().hex[:8]}"
    trackio.init(project=project, name="owner", config={"learning_rate": 0.001}, **LOCAL_ONLY)
    sink = TrackioSink(run=CURRENT, step_metric=TRANSFORMERS_STEP_METRIC)
    monitor.bus.connect(sink)
    for step in STEPS:  # as transformers' TrackioCallback logs: no step=, the global step as a key
        trackio.log({"train/loss": 1.0 / step, TRANSFORMERS_STEP_METRIC: step})
        monitor.observe([rows.balanced, rows.collapsing], step=step)
    sink.close()
    trackio.finish()

    logs = trackio_storage.get_logs(project, "owner")
    assert [log["step"] for log in logs] == list(range(2 * len(STEPS)))
    ours = [log for log in logs if "chronomoe/max_vio/layer_1" in log]
    assert [log[TRANSFORMERS_STEP_METRIC] for log in ours] == STEPS
    assert trackio_storage.get_run_config(project, "owner")["learning_rate"] == 0.001


def test_trackio_sink_refuses_a_run_config_for_a_run_it_did_not_start(trackio_storage):
    from chronomoe import InvalidInputError
    from chronomoe.integrations.trackio import TrackioSink

    with pytest.raises(InvalidInputError, match="run_config="):
        TrackioSink(run=CURRENT, run_config={"run_id": "r"})
