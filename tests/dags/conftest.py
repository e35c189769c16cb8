from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dagbag(airflow_db):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


WHEN = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def run_dag(dagbag):  # type: ignore[no-untyped-def]
    def _run(dag_id: str, when: datetime = WHEN, **kwargs):  # type: ignore[no-untyped-def]
        # A fixed run_after gives a fixed run_id: calling this twice re-runs the same DAG run.
        return dagbag.dags[dag_id].test(logical_date=when, run_after=when, **kwargs)

    return _run
