"""MonitorConfig: typed, validated before anything is created, resolved into the manifest; the package layout."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from chronomoe import AlertRules, DistributedConfig, Monitor, MonitorConfig, load_manifest

CHECKOUT = Path(__file__).resolve().parent.parent


def test_defaults_are_documented_and_valid():
    config = MonitorConfig()
    assert (config.output_dir, config.io_errors, config.capacity, config.write_events) == (None, "log", 128, True)
    assert config.rules == AlertRules.default()
    assert config.distributed == DistributedConfig()
    assert all(field.description for field in MonitorConfig.model_fields.values())
    assert all(field.description for field in DistributedConfig.model_fields.values())


def test_overrides_replace_fields_of_the_given_config():
    base = MonitorConfig(capacity=16, fsync=True)
    config = MonitorConfig.build(base, capacity=32, distributed={"count_tokens": False})
    assert (config.capacity, config.fsync, config.distributed.count_tokens) == (32, True, False)


def test_a_nested_override_keeps_the_other_fields_of_the_given_group():
    base = MonitorConfig(distributed=DistributedConfig(collective_timeout=5.0))
    config = MonitorConfig.build(base, distributed={"count_tokens": False})
    assert (config.distributed.collective_timeout, config.distributed.count_tokens) == (5.0, False)


def test_an_unknown_option_is_refused_naming_it_and_the_closest_valid_name(assert_rejected):
    error = assert_rejected(lambda: Monitor("run", io_error="raise"), "io_error", "did you mean io_errors?")
    assert "Options: output_dir" in str(error)


def test_a_distributed_option_given_flat_names_the_group_it_belongs_to(assert_rejected):
    assert_rejected(lambda: Monitor("run", count_tokens=False), "count_tokens", "distributed={'count_tokens': ...}")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"io_errors": "bogus"}, "io_errors"),
        ({"capacity": 0}, "capacity"),
        ({"n_experts": [8, 0]}, "n_experts"),
        ({"top_k": 0}, "top_k"),
        ({"distributed": {"collective_timeout": -1}}, "distributed.collective_timeout"),
        ({"distributed": {"count_token": False}}, "distributed.count_token"),
        ({"rules": {"pre_persistence": 0}}, "rules.pre_persistence"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_even_without_an_output_dir(assert_rejected, overrides, field):
    assert_rejected(lambda: Monitor("run", **overrides), field)


def test_a_dict_given_as_config_points_to_training_config(assert_rejected):
    assert_rejected(lambda: Monitor("run", config={"lr": 1e-3}), "config", "training_config=")


@pytest.mark.parametrize(
    "arguments",
    [
        {"io_errors": "bogus"},
        {"controller": "none"},
        {"lens": "identity"},
        {"run_id": "../escape"},
        {"capacity": -3},
    ],
)
def test_nothing_is_created_on_disk_before_every_argument_is_valid(tmp_path, arguments):
    arguments = {"run_id": "run", **arguments}
    with pytest.raises(ValueError):
        Monitor(arguments.pop("run_id"), output_dir=tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_a_string_controller_or_lens_is_refused_naming_what_is_expected(assert_rejected):
    assert_rejected(lambda: Monitor("run", controller="none"), "controller", "on_snapshot")
    assert_rejected(lambda: Monitor("run", lens="identity"), "lens", "ChronoLens")


def test_none_means_no_controller_and_no_lens():
    monitor = Monitor("run", controller=None, lens=None)
    assert (monitor.controller, monitor.lens) == (None, None)
    assert monitor.bus.subscribers("snapshot") == []


def test_the_resolved_configuration_is_written_into_the_manifest(tmp_path):
    monitor = Monitor("run", output_dir=tmp_path, n_experts=[4, 4], training_config={"lr": 0.1})
    manifest = load_manifest(tmp_path / "run")
    resolved = manifest["monitor_config"]
    assert resolved == monitor.config.resolved()
    assert resolved["n_experts"] == [4, 4] and resolved["output_dir"] == str(tmp_path)
    assert resolved["rules"] == AlertRules.default().model_dump()
    assert resolved["distributed"]["process_group"] is None
    assert manifest["config"] == {"lr": 0.1}
    json.dumps(resolved)  # JSON-ready


def test_the_resolved_configuration_round_trips_into_an_equal_config():
    config = MonitorConfig(n_experts=[8], fsync=True, training_config={"seed": 1})
    assert MonitorConfig.model_validate(config.resolved()) == config


# -- the package layout -----------------------------------------------------------------------


def test_governance_and_contract_packages_import_from_a_checkout_without_an_install_hook(tmp_path):
    """``chronomoe.controller``, ``.lens`` and ``.specs`` stand in top-level folders of the repository; a
    checkout imported with no editable-install hook (its ``.pth`` files unread) must still find them."""
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    program = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path += sys.argv[2:];"
        "import chronomoe.specs, chronomoe.controller, chronomoe.lens;"
        "from chronomoe import AlertRules; AlertRules.default();"
        "print(chronomoe.specs.__file__, chronomoe.controller.__file__, chronomoe.lens.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", program, str(CHECKOUT), *site_packages],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    specs, controller, lens = result.stdout.split()
    assert Path(specs) == CHECKOUT / "specs" / "__init__.py"
    assert Path(controller) == CHECKOUT / "controller" / "__init__.py"
    assert Path(lens) == CHECKOUT / "lens" / "__init__.py"


def test_a_folder_left_in_the_package_by_an_older_checkout_does_not_hide_the_governance_packages(tmp_path):
    """An older checkout had ``chronomoe/controller/``; the ``__pycache__`` Python wrote there stays after a pull
    and would make ``chronomoe.controller`` an empty namespace package."""
    checkout = tmp_path / "checkout"
    (checkout / "chronomoe").mkdir(parents=True)
    for entry in CHECKOUT.iterdir():
        if entry.name in ("controller", "lens", "specs"):
            (checkout / entry.name).symlink_to(entry)
    for entry in (CHECKOUT / "chronomoe").iterdir():
        (checkout / "chronomoe" / entry.name).symlink_to(entry)
    for name in ("controller", "lens"):
        (checkout / "chronomoe" / name / "__pycache__").mkdir(parents=True)
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    program = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path += sys.argv[2:];"
        "from chronomoe.controller import ControlDecision; from chronomoe.lens import LensState; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", program, str(checkout), *site_packages],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "ok", result.stderr
