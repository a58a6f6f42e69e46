"""The committed JSON Schemas in specs/schemas/: current with the models, and true of real records."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import pytest

from chronomoe import (
    AlertRules,
    AlertTransition,
    IdentityLens,
    Monitor,
    NoOpController,
    RoutingEvent,
    SystemSnapshot,
)
from chronomoe.errors import InvalidInputError
from chronomoe.schemas import (
    RECORD_MODELS,
    RUN_FILES,
    load_schema,
    main,
    packaged_schema_dir,
    schema_file_name,
    schema_validator,
    stale_schemas,
    write_schemas,
)


def test_committed_schemas_match_the_models():
    assert stale_schemas() == [], "a model changed: run `python -m chronomoe.schemas --write` and commit specs/schemas/"


def test_every_record_type_has_exactly_one_committed_schema():
    committed = sorted(path.name for path in packaged_schema_dir().glob("*.schema.json"))
    assert committed == sorted(schema_file_name(name) for name in RECORD_MODELS)


def test_schemas_are_package_data_under_chronomoe_specs():
    resource = resources.files("chronomoe.specs").joinpath("schemas", "RoutingEvent.schema.json")
    assert json.loads(resource.read_text())["title"] == "RoutingEvent"


def test_a_changed_schema_file_is_reported_stale_and_fails_the_check(tmp_path):
    write_schemas(tmp_path)
    path = tmp_path / schema_file_name("AlertRules")
    schema = json.loads(path.read_text())
    del schema["properties"]["neff_ratio"]
    path.write_text(json.dumps(schema))

    assert stale_schemas(tmp_path) == ["AlertRules"]
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    assert main(["--write", "--dir", str(tmp_path)]) == 0
    assert main(["--check", "--dir", str(tmp_path)]) == 0


def test_schema_files_are_canonical_sorted_json_with_trailing_newline():
    for name in RECORD_MODELS:
        text = (packaged_schema_dir() / schema_file_name(name)).read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _collapsing_snapshot() -> SystemSnapshot:
    """A snapshot with a transition, a no-data layer and layers of 8 and 2 experts."""
    monitor = Monitor("schemas", rules=AlertRules(pre_persistence=1, confirm_persistence=1))
    return monitor.observe([[90, 10, 0, 0, 0, 0, 0, 0], [0] * 8, [5, 5, 0, 0, 0, 0, 0, 0]], step=7, train_loss=1.5)


def _real_records() -> dict[str, object]:
    snapshot = _collapsing_snapshot()
    lens = IdentityLens()
    lens.on_snapshot(snapshot)
    return {
        "RoutingEvent": RoutingEvent(
            run_id="schemas",
            step=3,
            layer_id=1,
            n_experts=4,
            top_k=2,
            expert_token_counts=np.array([5, 0, 3, 8]),
            router_prob_sums=[1.5, 0.25, 1.0, 2.25],
            loss=2.0,
            aux_loss=0.01,
        ),
        "SystemSnapshot": snapshot,
        "AlertTransition": snapshot.transitions[0],
        "AlertRules": AlertRules.default(),
        "ControlDecision": NoOpController().on_transition(snapshot.transitions[0]),
        "LensState": lens.state,
    }


@pytest.mark.parametrize("name", sorted(RECORD_MODELS))
def test_real_records_dumped_as_json_validate_against_the_committed_schema(name):
    record = _real_records()[name]
    assert isinstance(record, RECORD_MODELS[name])
    jsonschema.validate(record.model_dump(mode="json"), load_schema(name), cls=jsonschema.Draft202012Validator)


def test_the_snapshot_used_above_holds_a_transition_and_a_no_data_layer():
    snapshot = _collapsing_snapshot()
    assert snapshot.transitions and isinstance(snapshot.transitions[0], AlertTransition)
    assert [layer.no_data for layer in snapshot.layers] == [False, True, False]


def test_every_line_the_writer_wrote_validates_against_its_schema(make_run):
    run_dir = make_run(infer=True)
    for file_name, name in RUN_FILES.items():
        validator = schema_validator(name)
        lines = (run_dir / file_name).read_bytes().splitlines()
        assert lines
        for line in lines:
            validator.validate(json.loads(line))


def test_written_events_carry_the_derived_token_count_and_active_experts(make_run):
    first_event = json.loads((make_run() / "routing_events.jsonl").read_bytes().splitlines()[0])
    properties = load_schema("RoutingEvent")["properties"]
    assert first_event["token_count"] == sum(first_event["expert_token_counts"])
    assert {"token_count", "active_experts"} <= set(properties)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("RoutingEvent", lambda record: record.pop("expert_token_counts")),
        ("RoutingEvent", lambda record: record.update(mode="EVAL")),
        ("RoutingEvent", lambda record: record.update(unexpected=1)),
        ("SystemSnapshot", lambda record: record["layers"][0].update(n_experts=0)),
        ("SystemSnapshot", lambda record: record["layers"][0].update(alert_state="collapsed")),
        ("AlertRules", lambda record: record.update(pre_persistence="3")),
    ],
    ids=["missing-counts", "bad-mode", "extra-field", "zero-experts", "unknown-state", "string-persistence"],
)
def test_schemas_reject_malformed_records(name, change):
    record = _real_records()[name].model_dump(mode="json")
    change(record)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, load_schema(name), cls=jsonschema.Draft202012Validator)


def test_unknown_record_type_is_refused_by_name():
    with pytest.raises(InvalidInputError, match="schema name='Nope'"):
        load_schema("Nope")
