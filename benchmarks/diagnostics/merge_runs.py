"""Merge the runs of one method, finished on other machines, into a study database.

A study split across machines (e.g. BBOB instances 2-3 on one, 4-5 on another, each
resuming its own copy of the database) ends with the runs of one method spread over
several copies. This copies, for each source, the rows of ``--method`` in study
``--study`` whose problem matches one of the source's SQL ``LIKE`` patterns into the
target, replacing the target's rows of those runs (the source continued them). The
target's stored study configuration is left as it is.

    PYTHONPATH=. python benchmarks/diagnostics/merge_runs.py benchmarks/results/bbob_bbob20.db \\
        --study bbob20 --method gp /tmp/bb/gp_local.db:%_i4_%,%_i5_% /tmp/bb/gp_23.db:%_i2_%,%_i3_%
"""

from __future__ import annotations

import argparse
import sqlite3

COLUMNS = (
    "study, problem, method, seed, iteration, x, y, status, error, "
    "eval_seconds, fit_seconds, acq_seconds, created, finished"
)


def merge(target: str, study: str, method: str, sources: list[tuple[str, list[str]]]) -> dict[str, int]:
    """Copy the matching runs of each source into ``target``; returns rows copied per source."""
    conn = sqlite3.connect(target)
    copied = {}
    try:
        for path, patterns in sources:
            conn.execute("ATTACH DATABASE ? AS src", (path,))
            where = " OR ".join("problem LIKE ?" for _ in patterns)
            args = (study, method, *patterns)
            conn.execute(f"DELETE FROM evaluations WHERE study = ? AND method = ? AND ({where})", args)
            cur = conn.execute(
                f"INSERT INTO evaluations ({COLUMNS}) SELECT {COLUMNS} FROM src.evaluations "
                f"WHERE study = ? AND method = ? AND ({where}) ORDER BY id",
                args,
            )
            copied[path] = cur.rowcount
            conn.commit()
            conn.execute("DETACH DATABASE src")
    finally:
        conn.close()
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="the study database to merge into (changed in place)")
    parser.add_argument("sources", nargs="+", help="DB:PATTERN[,PATTERN...] (SQL LIKE patterns on problem)")
    parser.add_argument("--study", required=True)
    parser.add_argument("--method", required=True)
    args = parser.parse_args()
    sources = []
    for source in args.sources:
        path, _, patterns = source.rpartition(":")
        if not path or not patterns:
            raise SystemExit(f"a source is DB:PATTERN[,PATTERN...], got {source!r}")
        sources.append((path, patterns.split(",")))
    for path, rows in merge(args.target, args.study, args.method, sources).items():
        print(f"{path}: {rows} rows")


if __name__ == "__main__":
    main()
