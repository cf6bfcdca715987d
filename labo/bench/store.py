"""SQLite study store: every evaluation of every run, written before the next proposal.

A *study* is a named set of runs; a *run* is one ``(problem, method, seed)``. Each
evaluation is one row of ``evaluations``: inserted with status ``running`` when its
point is proposed, updated to ``ok`` or ``failed`` when the objective returns. A
run resumed after a crash re-evaluates its ``running`` rows (proposed, never
finished) and proposes nothing that is already stored, so no completed
evaluation is lost or repeated.

The store is Python's embedded ``sqlite3`` in WAL mode (several processes or Dask
workers may write to one file). ``open_store`` takes a file path or a
``sqlite:///path`` URL; ``open_store(..., read_only=True)`` (plots, exports) never
creates or changes a file.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from collections.abc import Callable
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

# Configuration fields that ``--resume`` may raise (extending a study's budget).
GROWABLE = ("budget", "budget_scale")


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


def to_json(value, **kwargs) -> str:
    """``json.dumps`` that writes NaN and infinities as ``null`` (valid JSON, unlike bare ``NaN``)."""
    return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


class StudyStore:
    """A study database (see the module docstring). Use :func:`open_store` to create one."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        try:
            if read_only:
                self._conn = self._connect_read_only(path)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), timeout=60.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StudyError(f"cannot open study store at {str(path)!r}: {err}") from err

    @staticmethod
    def _connect_read_only(path: Path) -> sqlite3.Connection:
        if not path.is_file():
            raise StudyError(
                f"no study database at {str(path)!r}; run `labo optimize` or `labo bench` first, "
                "or pass --db with the database that holds the study."
            )
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=60.0)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"studies", "evaluations"} <= tables:
            conn.close()
            raise StudyError(f"{str(path)!r} is not a labo study database (no studies table).")
        return conn

    def close(self) -> None:
        self._conn.close()

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise StudyError(f"cannot {action}: the study store {str(self.path)!r} was opened read-only.")

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ studies
    def create_study(
        self,
        name: str,
        config: dict,
        resume: bool,
        option: Callable[[str, object], str] | None = None,
    ) -> dict:
        """Register study ``name`` with ``config``, or check it on resume.

        On resume the configurations must agree, except that a field of
        :data:`GROWABLE` (the budget) may be raised: the stored configuration is then
        updated and the runs continue up to the new budget.

        Args:
            name: Study name.
            config: JSON-serialisable configuration of the study.
            resume: Continue an existing study instead of refusing it.
            option: ``option(field, value)`` says how the user sets a field to a value
                (e.g. ``"--method gp"``); used in the message of a mismatch.

        Returns:
            The configuration now stored.

        Raises:
            StudyError: The study exists and ``resume`` is false, or ``resume`` is true and
                the configurations differ (the message names each differing field, its
                stored and given value, and what to pass to continue the study).
        """
        self._check_writable(f"create study {name!r}")
        row = self._conn.execute("SELECT config FROM studies WHERE name = ?", (name,)).fetchone()
        given = json.loads(json.dumps(config))
        if row is None:
            with self._conn:
                self._conn.execute(
                    "INSERT INTO studies VALUES (?, ?, ?)", (name, json.dumps(given), time.time())
                )
            return given
        stored = json.loads(row[0])
        if not resume:
            raise StudyError(
                f"study {name!r} already exists in {str(self.path)!r}; pass --resume to continue it "
                "or choose another study name."
            )
        differing = [k for k in sorted(set(stored) | set(given), key=str) if stored.get(k) != given.get(k)]
        grown = [k for k in differing if k in GROWABLE and _larger(given.get(k), stored.get(k))]
        fixed = [k for k in differing if k not in grown]
        if fixed:
            raise StudyError(_mismatch_message(name, self.path, stored, given, fixed, option))
        if grown:
            with self._conn:
                self._conn.execute("UPDATE studies SET config = ? WHERE name = ?", (json.dumps(given), name))
        return given

    def study_names(self) -> list[str]:
        """Names of the studies in the store, oldest first."""
        return [r[0] for r in self._conn.execute("SELECT name FROM studies ORDER BY created")]

    def study_config(self, name: str) -> dict:
        row = self._conn.execute("SELECT config FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = self.study_names()
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
        self._check_writable("record an evaluation")
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
        self._check_writable("record an evaluation")
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
        """Write all evaluations of ``study`` to ``path`` (``.json`` or ``.csv``).

        JSON holds the study's configuration and one object per evaluation (``x`` and
        ``y`` as lists). CSV has one row per evaluation and one column per input
        dimension, ``x0, x1, ...``, and per objective: ``y`` for one objective,
        ``y0, y1, ...`` for several (empty where the evaluation failed or is running).
        Non-finite numbers are written as ``null`` (JSON) or left empty (CSV).
        """
        path = Path(path)
        if path.suffix not in (".json", ".csv"):
            raise StudyError(f"export path must end in .json or .csv, got {str(path)!r}.")
        config = self.study_config(study)
        rows = [asdict(e) for e in self.evaluations(study)]
        if path.suffix == ".json":
            payload = {"study": study, "config": config, "evaluations": rows}
            path.write_text(to_json(payload, indent=1))
            return path
        d = max((len(r["x"]) for r in rows), default=0)
        m = max((len(r["y"]) for r in rows if r["y"] is not None), default=1)
        x_names = [f"x{i}" for i in range(d)]
        y_names = ["y"] if m == 1 else [f"y{j}" for j in range(m)]
        fields = list(Evaluation.__dataclass_fields__)
        at = fields.index("x")
        header = fields[:at] + x_names + y_names + fields[at + 2 :]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            for row in rows:
                x, y = row.pop("x"), row.pop("y") or []
                row.update(zip(x_names, x, strict=False))
                row.update(zip(y_names, y, strict=False))
                writer.writerow({k: _finite_or_none(v) for k, v in row.items()})
        return path


def _larger(new, old) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (new, old))
    return numbers and new > old


def _mismatch_message(
    name: str, path: Path, stored: dict, given: dict, fields: list[str], option: Callable | None
) -> str:
    """Which fields differ, stored vs given, and what to pass to continue the study."""
    missing = object()
    parts = []
    for k in fields:
        old, new = stored.get(k, missing), given.get(k, missing)
        was = "unset" if old is missing else repr(old)
        now = "unset" if new is missing else repr(new)
        grow = " (--resume can extend a budget, not shrink it)" if k in GROWABLE else ""
        parts.append(f"{k}: stored {was}, given {now}{grow}")
    fix = ""
    if option is not None:
        fix = " " + " ".join(option(k, stored[k]) for k in fields if k in stored)
    return (
        f"cannot resume study {name!r} in {str(path)!r}: its configuration differs in "
        f"{'; '.join(parts)}. To continue it, rerun with the stored value{'s' if len(fields) > 1 else ''}"
        f"{':' + fix if fix.strip() else ''}; to start afresh, choose another study name."
    )


def _to_evaluation(row: tuple) -> Evaluation:
    values = list(row)
    values[6] = json.loads(values[6])
    values[7] = json.loads(values[7]) if values[7] is not None else None
    return Evaluation(*values)


def open_store(location: str | Path, read_only: bool = False) -> StudyStore:
    """Open the study store at a file path or ``sqlite:///path`` URL.

    Args:
        location: File path or ``sqlite:///path`` URL.
        read_only: Open an existing store for reading only. Nothing is created or
            changed; a missing file raises :class:`StudyError`. Otherwise the store is
            created if needed.
    """
    return StudyStore(_path_of(location), read_only)
