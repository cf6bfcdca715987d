import csv
import json
import math

import pytest

from labo.bench.store import open_store
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
    with pytest.raises(StudyError, match="cannot resume"):
        store.create_study("st", {"a": 2}, resume=True)
    with pytest.raises(StudyError, match="not found"):
        store.study_config("nope")


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
    assert json.loads(row["x"]) == [0.25] and row["status"] == "ok" and float(row["eval_seconds"]) == 0.5
    with pytest.raises(StudyError, match=".json or .csv"):
        store.export("st", tmp_path / "e.txt")
