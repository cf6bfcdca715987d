"""SQLite study store: every evaluation of every run, written before the next proposal.

A *study* is a named set of runs; a *run* is one ``(problem, method, seed)``. Each
evaluation is one row of ``evaluations``: inserted with status ``running`` when its
point is proposed, updated to ``ok`` or ``failed`` when the objective returns. A
run resumed after a crash re-evaluates its ``running`` rows (proposed, never
finished) and proposes nothing that is already stored, so no completed
evaluation is lost or repeated.

The store is Python's embedded ``sqlite3`` in WAL mode (several processes or Dask
workers may write to one file). ``open_store`` takes a file path or a
``sqlite:///path`` URL.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labo.exceptions import StudyError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL, problem TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL,
    iteration INTEGER NOT NULL, x TEXT NOT NULL, y TEXT, status TEXT NOT NULL, error TEXT,
    eval_seconds REAL, fit_seconds REAL, acq_seconds REAL, created REAL NOT NULL, finished REAL
);
CREATE INDEX IF NOT EXISTS run_index ON evaluations (study, problem, method, seed);
"""

STATUSES = ("running", "ok", "failed")


@dataclass
class Evaluation:
    """One row of the store (``y`` is ``None`` unless ``status == "ok"``)."""

    id: int
    study: str
    problem: str
    method: str
    seed: int
    iteration: int
    x: list[float]
    y: list[float] | None
    status: str
    error: str | None
    eval_seconds: float | None
    fit_seconds: float | None
    acq_seconds: float | None
    created: float
    finished: float | None


def _path_of(location: str | Path) -> Path:
    text = str(location)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    elif "://" in text:
        raise StudyError(f"store location must be a file path or a sqlite:/// URL, got {text!r}.")
    if not text:
        raise StudyError("store location is empty; expected a file path or a sqlite:/// URL.")
    return Path(text)


class StudyStore:
    """A study database (see the module docstring). Use :func:`open_store` to create one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), timeout=60.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StudyError(f"cannot open study store at {str(path)!r}: {err}") from err

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ studies
    def create_study(self, name: str, config: dict, resume: bool) -> dict:
        """Register study ``name`` with ``config``, or check it on resume.

        Raises:
            StudyError: The study exists and ``resume`` is false, or ``resume`` is true
                and the stored configuration differs from ``config``.
        """
        row = self._conn.execute("SELECT config FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO studies VALUES (?, ?, ?)", (name, json.dumps(config), time.time())
                )
            return config
        stored = json.loads(row[0])
        if not resume:
            raise StudyError(
                f"study {name!r} already exists in {str(self.path)!r}; pass --resume to continue it "
                "or choose another study name."
            )
        if stored != json.loads(json.dumps(config)):
            raise StudyError(
                f"study {name!r} was created with config {stored}, cannot resume it with {config}."
            )
        return stored

    def study_config(self, name: str) -> dict:
        row = self._conn.execute("SELECT config FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [r[0] for r in self._conn.execute("SELECT name FROM studies")]
            raise StudyError(f"study {name!r} not found in {str(self.path)!r}; known studies: {known}.")
        return json.loads(row[0])

    # ------------------------------------------------------------------ evaluations
    def add_running(
        self,
        study: str,
        problem: str,
        method: str,
        seed: int,
        iteration: int,
        x: list[float],
        fit_seconds: float | None = None,
        acq_seconds: float | None = None,
    ) -> int:
        """Record a proposed point before it is evaluated; returns its row id."""
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO evaluations (study, problem, method, seed, iteration, x, status, "
                "fit_seconds, acq_seconds, created) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (
                    study,
                    problem,
                    method,
                    seed,
                    iteration,
                    json.dumps(x),
                    fit_seconds,
                    acq_seconds,
                    time.time(),
                ),
            )
        return int(cur.lastrowid)

    def finish(
        self, row_id: int, y: list[float] | None, eval_seconds: float, error: str | None = None
    ) -> str:
        """Store the result of row ``row_id``: ``ok`` if ``y`` is all finite, else ``failed``."""
        ok = error is None and y is not None and all(math.isfinite(v) for v in y)
        status = "ok" if ok else "failed"
        if not ok and error is None:
            error = f"objective returned non-finite values {y}"
        with self._conn:
            self._conn.execute(
                "UPDATE evaluations SET y = ?, status = ?, error = ?, eval_seconds = ?, finished = ? "
                "WHERE id = ?",
                (json.dumps(y) if ok else None, status, error, eval_seconds, time.time(), row_id),
            )
        return status

    def evaluations(
        self,
        study: str,
        problem: str | None = None,
        method: str | None = None,
        seed: int | None = None,
    ) -> list[Evaluation]:
        """Rows of ``study`` (optionally of one problem/method/seed), in insertion order."""
        query, args = "SELECT * FROM evaluations WHERE study = ?", [study]
        for column, value in (("problem", problem), ("method", method), ("seed", seed)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [_to_evaluation(r) for r in rows]

    # ------------------------------------------------------------------ export
    def export(self, study: str, path: str | Path) -> Path:
        """Write all evaluations of ``study`` to ``path`` (``.json`` or ``.csv``)."""
        self.study_config(study)
        path = Path(path)
        rows = [asdict(e) for e in self.evaluations(study)]
        if path.suffix == ".json":
            payload = {"study": study, "config": self.study_config(study), "evaluations": rows}
            path.write_text(json.dumps(payload, indent=1))
        elif path.suffix == ".csv":
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(Evaluation.__dataclass_fields__))
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
        else:
            raise StudyError(f"export path must end in .json or .csv, got {str(path)!r}.")
        return path


def _to_evaluation(row: tuple) -> Evaluation:
    values = list(row)
    values[6] = json.loads(values[6])
    values[7] = json.loads(values[7]) if values[7] is not None else None
    return Evaluation(*values)


def open_store(location: str | Path) -> StudyStore:
    """Open (creating if needed) the study store at a file path or ``sqlite:///path`` URL."""
    return StudyStore(_path_of(location))
