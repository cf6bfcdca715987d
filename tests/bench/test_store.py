import csv
import json
import math

import pytest

from labo.bench.store import open_store, to_json
from labo.exceptions import StudyError


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "s.db") as s:
        s.create_study("st", {"a": 1}, resume=False)
        yield s


def test_rows_round_trip_and_status(store):
    r1 = store.add_running("st", "p", "m", 0, 0, [0.1, 0.2], fit_seconds=1.5, acq_seconds=2.5)
    r2 = store.add_running("st", "p", "m", 0, 1, [0.3, 0.4])
    r3 = store.add_running("st", "p", "m", 1, 1, [0.5, 0.6])
    assert store.finish(r1, [1.0], 0.1) == "ok"
    assert store.finish(r2, [math.nan], 0.1) == "failed"
    rows = store.evaluations("st", "p", "m", 0)
    assert [r.id for r in rows] == [r1, r2]
    assert rows[0].x == [0.1, 0.2] and rows[0].y == [1.0] and rows[0].status == "ok"
    assert rows[0].fit_seconds == 1.5 and rows[0].acq_seconds == 2.5
    assert rows[1].y is None and rows[1].status == "failed" and "non-finite" in rows[1].error
    (row3,) = store.evaluations("st", seed=1)
    assert row3.id == r3 and row3.status == "running"
    assert store.finish(r3, None, 0.2, error="boom") == "failed"
    assert store.evaluations("st", seed=1)[0].error == "boom"


def test_study_exists_needs_resume_and_same_config(store):
    with pytest.raises(StudyError, match="already exists"):
        store.create_study("st", {"a": 1}, resume=False)
    assert store.create_study("st", {"a": 1}, resume=True) == {"a": 1}
    with pytest.raises(StudyError, match=r"cannot resume study 'st' .* differs in a: stored 1, given 2\."):
        store.create_study("st", {"a": 2}, resume=True)
    with pytest.raises(StudyError, match="not found"):
        store.study_config("nope")


def test_resume_names_each_differing_field_and_what_to_pass(tmp_path):
    config = {"kind": "optimize", "method": "sobol", "seed": 0, "budget": 10, "q": 1}
    with open_store(tmp_path / "r.db") as store:
        store.create_study("st", config, resume=False)
        changed = {**config, "method": "gp", "seed": 3}
        with pytest.raises(StudyError) as info:
            store.create_study("st", changed, resume=True, option=lambda k, v: f"--{k} {v}")
    message = str(info.value)
    assert "differs in method: stored 'sobol', given 'gp'; seed: stored 0, given 3." in message
    assert "rerun with the stored values: --method sobol --seed 0" in message
    assert "'kind'" not in message and "budget" not in message  # only the differing fields


def test_resume_with_a_larger_budget_extends_the_study(tmp_path):
    config = {"kind": "bench", "budget": 10, "budget_scale": 0.5, "seed": 0}
    with open_store(tmp_path / "g.db") as store:
        store.create_study("st", config, resume=False)
        grown = {**config, "budget": 15, "budget_scale": 1.0}
        assert store.create_study("st", grown, resume=True) == grown
        assert store.study_config("st") == grown  # stored: the next resume compares with it
        with pytest.raises(StudyError, match=r"budget: stored 15, given 12 \(--resume can extend a budget"):
            store.create_study("st", {**grown, "budget": 12}, resume=True)
        with pytest.raises(StudyError, match=r"differs in seed: stored 0, given 1\.") as info:
            store.create_study("st", {**grown, "budget": 20, "seed": 1}, resume=True)
        assert "budget" not in str(info.value)
        assert store.study_config("st") == grown  # a refused resume changes nothing


def test_read_only_store_never_creates_or_writes(tmp_path):
    for location in [tmp_path / "none.db", f"sqlite:///{tmp_path / 'none.db'}"]:
        with pytest.raises(StudyError, match="no study database at"):
            open_store(location, read_only=True)
    (tmp_path / "other.db").write_bytes(b"")
    with pytest.raises(StudyError, match="not a labo study database"):
        open_store(tmp_path / "other.db", read_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    assert (tmp_path / "other.db").read_bytes() == b""
    with open_store(tmp_path / "w.db") as store:
        store.create_study("st", {"a": 1}, resume=False)
        store.finish(store.add_running("st", "p", "m", 0, 0, [0.5]), [1.0], 0.1)
    with open_store(tmp_path / "w.db", read_only=True) as store:
        assert store.study_names() == ["st"] and store.evaluations("st")[0].y == [1.0]
        with pytest.raises(StudyError, match="read-only"):
            store.add_running("st", "p", "m", 0, 1, [0.7])
        with pytest.raises(StudyError, match="read-only"):
            store.create_study("new", {}, resume=False)


def test_to_json_writes_null_for_non_finite_numbers():
    text = to_json({"mean": math.nan, "values": [1.0, math.inf, (-math.inf, 2)], "n": 3})
    assert json.loads(text, parse_constant=pytest.fail) == {
        "mean": None,
        "values": [1.0, None, [None, 2]],
        "n": 3,
    }


def test_url_and_bad_locations(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'u.db'}") as s:
        s.create_study("x", {}, resume=False)
    assert (tmp_path / "u.db").exists()
    with pytest.raises(StudyError, match="sqlite:/// URL"):
        open_store("postgresql://host/db")
    with pytest.raises(StudyError, match="cannot open"):
        open_store(tmp_path / "u.db" / "inside_a_file.db")


def test_export_json_and_csv(store, tmp_path):
    rid = store.add_running("st", "p", "m", 0, 0, [0.25])
    store.finish(rid, [2.0], 0.5)
    payload = json.loads(store.export("st", tmp_path / "e.json").read_text())
    assert payload["config"] == {"a": 1}
    assert payload["evaluations"][0]["x"] == [0.25] and payload["evaluations"][0]["y"] == [2.0]
    with store.export("st", tmp_path / "e.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert (
        row["x0"] == "0.25"
        and row["y"] == "2.0"
        and row["status"] == "ok"
        and float(row["eval_seconds"]) == 0.5
    )
    with pytest.raises(StudyError, match=".json or .csv"):
        store.export("st", tmp_path / "e.txt")
    assert not (tmp_path / "e.txt").exists()


@pytest.mark.parametrize("m", [1, 2])
def test_csv_export_has_one_column_per_input_dimension_and_objective(store, tmp_path, m):
    ok = store.add_running("st", "p", "m", 0, 0, [0.1, 0.2, 0.3])
    store.finish(ok, [1.5, -2.0][:m], 0.5)
    failed = store.add_running("st", "p", "m", 0, 1, [0.4, 0.5, 0.6])
    store.finish(failed, None, 0.5, error="boom")
    store.add_running("st", "p", "m", 0, 2, [0.7, 0.8, 0.9])  # still running
    with store.export("st", tmp_path / "e.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    y_names = ["y"] if m == 1 else ["y0", "y1"]
    head = ["id", "study", "problem", "method", "seed", "iteration", "x0", "x1", "x2", *y_names, "status"]
    assert reader.fieldnames[: len(head)] == head
    assert [float(rows[0][f"x{i}"]) for i in range(3)] == [0.1, 0.2, 0.3]
    assert [float(rows[0][k]) for k in y_names] == [1.5, -2.0][:m]
    assert [rows[1][k] for k in y_names] == [""] * m and rows[1]["error"] == "boom"
    assert rows[2]["status"] == "running" and float(rows[2]["x2"]) == 0.9 and rows[2]["finished"] == ""
