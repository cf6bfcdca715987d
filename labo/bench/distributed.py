"""Parallel evaluation on Dask: asynchronous BO for one run, and whole runs in parallel.

Asynchronous BO (:func:`run_async`): up to ``workers`` evaluations are in flight.
As soon as one finishes, its result is stored and a new point is proposed with
the still-running points as ``X_pending`` (the acquisition function treats them
jointly with the candidate, through the model's joint posterior), so no worker
waits for the slowest evaluation of a batch. Evaluations run on the workers;
proposals and every write to the study store happen in the calling process.

:func:`run_many` distributes independent ``(problem, method, seed)`` runs of a
benchmark; each worker writes its own run to the (WAL-mode SQLite) store.

:func:`make_client` connects to ``scheduler`` when given, else starts a
``LocalCluster`` of ``workers`` single-threaded workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from distributed import Client, LocalCluster, wait

from labo.bench.problems import ProblemObjective
from labo.bench.runner import (
    RunResult,
    RunSpec,
    failed_inputs,
    from_unit,
    initial_design,
    propose,
    to_unit,
    training_data,
)
from labo.bench.store import Evaluation, StudyStore, open_store
from labo.exceptions import BenchmarkError


@contextmanager
def make_client(workers: int = 2, scheduler: str | None = None, processes: bool = True) -> Iterator[Client]:
    """A Dask client: of the cluster at ``scheduler``, or of a new ``LocalCluster``.

    Args:
        workers: Workers of the local cluster (ignored with ``scheduler``).
        scheduler: Address of an existing scheduler (``tcp://host:8786``), or ``None``.
        processes: Local workers are processes (default) or threads of this process.

    Yields:
        The connected ``distributed.Client`` (closed, with its local cluster, on exit).
    """
    if not isinstance(workers, int) or workers < 1:
        raise BenchmarkError(f"workers must be a positive integer, got {workers!r}.")
    if scheduler is not None:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _evaluate_remote(objective: Callable, x: list[float]):
    from labo.bench.runner import evaluate

    return evaluate(objective, x)


def run_async(
    spec: RunSpec,
    objective: Callable,
    store: StudyStore,
    client: Client,
    workers: int,
    progress: Callable[[Evaluation | None, str], None] | None = None,
) -> RunResult:
    """Asynchronous BO of one run on a Dask cluster (resumable like ``run_bo``).

    Args:
        spec: The run (``spec.q`` is ignored: points are proposed one at a time).
        objective: Picklable ``x (list of d floats) -> float or m floats``.
        store: The study store (the study must exist).
        client: A Dask client (see :func:`make_client`).
        workers: Maximum number of evaluations in flight.
        progress: Called as ``progress(row, status)`` after each evaluation.

    Returns:
        The :class:`RunResult` with every row of the run.
    """
    key = (spec.study, spec.problem, spec.method, spec.seed)
    in_flight: dict = {}

    def rows() -> list[Evaluation]:
        return store.evaluations(*key)

    def submit(row: Evaluation) -> None:
        future = client.submit(_evaluate_remote, objective, row.x, pure=False)
        in_flight[future] = row

    for row in rows():
        if row.status == "running":  # proposed before a crash, never finished
            submit(row)
    n_rows = len(rows())
    if n_rows < spec.n_init:
        X0 = from_unit(spec, initial_design(spec))
        for i in range(n_rows, spec.n_init):
            store.add_running(*key, 0, X0[i].tolist())
        for row in rows():
            if row.status == "running" and row not in in_flight.values():
                submit(row)
    model, iteration = None, max((r.iteration for r in rows()), default=0)
    while True:
        existing = rows()
        while len(in_flight) < workers and len(existing) < spec.budget:
            X, Y = training_data(spec, existing)
            pending = torch.tensor([r.x for r in in_flight.values()], dtype=torch.float64)
            X_pending = to_unit(spec, pending) if len(in_flight) else None
            X_failed = failed_inputs(spec, existing)
            cand, fit_s, acq_s, model = propose(
                spec, X, Y, 1, X_pending, model, n_rows=len(existing), X_failed=X_failed
            )
            iteration += 1
            row_id = store.add_running(*key, iteration, from_unit(spec, cand)[0].tolist(), fit_s, acq_s)
            existing = rows()
            submit(next(r for r in existing if r.id == row_id))
        if not in_flight:
            break
        done, _ = wait(list(in_flight), return_when="FIRST_COMPLETED")
        for future in done:
            row = in_flight.pop(future)
            y, seconds, error = future.result()
            if error is None and y is not None and len(y) != spec.num_objectives:
                y, error = None, f"objective returned {len(y)} values, expected {spec.num_objectives}"
            status = store.finish(row.id, y, seconds, error)
            if progress is not None:
                progress(row, status)
    return RunResult(spec, rows())


def _run_benchmark(spec: RunSpec, location: str) -> tuple[str, str, int, int]:
    from labo.bench.runner import run_bo

    with open_store(location) as store:
        result = run_bo(spec, ProblemObjective(spec.problem), store)
    return spec.problem, spec.method, spec.seed, len(result.failed)


def run_many(
    specs: list[RunSpec],
    location: str,
    client: Client,
    on_done: Callable[[tuple[str, str, int, int]], None] | None = None,
) -> list[tuple[str, str, int, int]]:
    """Run benchmark runs in parallel on ``client``, each writing to the store at ``location``.

    Args:
        specs: Runs of named benchmark problems (``spec.problem`` in ``PROBLEM_NAMES``).
        location: Study store path or ``sqlite:///`` URL, opened by each worker.
        client: A Dask client.
        on_done: Called with ``(problem, method, seed, number failed)`` as each run ends.

    Returns:
        ``(problem, method, seed, number failed)`` of every run, in completion order.
    """
    futures = [client.submit(_run_benchmark, spec, str(location), pure=False) for spec in specs]
    finished = []
    from distributed import as_completed

    for future in as_completed(futures):
        summary = future.result()
        finished.append(summary)
        if on_done is not None:
            on_done(summary)
    return finished
