"""The step contract: what ``python -m ml <step>`` promises the Airflow operators that run it.

One small module, without imports, read by both sides: :mod:`ml.cli` and :mod:`ml.errors` on the
step's side, :mod:`ct_airflow.operators.step` and :mod:`ct_airflow.operators.pods` on the task's.

* **Exit codes:** 0 success or a skip (the JSON line then holds ``skip``); 1 a failure a person must
  act on; 2 refused arguments or configuration, which no retry can fix; 75 a service that did not
  answer (sysexits.h ``EX_TEMPFAIL``): nothing was decided, retry later.
* **The result:** the last non-empty stdout line is one JSON object. A pod also writes it to
  ``XCOM_DIR/XCOM_FILE`` for the provider's XCom sidecar, but only when its operator asks for it by
  setting ``XCOM_ENV`` to ``1``: a step run by anything else never writes there, even on a host
  where that folder exists.
* **Step names,** and which take a run key, which a backfill replays, and the ``ct_ops`` override.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 75  # sysexits.h EX_TEMPFAIL

#: Where the provider's XCom sidecar reads a pod's result, and the variable that asks a step to write it.
XCOM_DIR = "/airflow/xcom"
XCOM_FILE = "return.json"
XCOM_ENV = "CT_WRITE_XCOM"

#: Steps that take ``--run-key`` (one DAG run's key).
RUN_KEY_STEPS = frozenset(
    {"drift", "decide", "train", "evaluate", "gate", "approval", "rollback", "promote", "monitor"}
)
#: The steps a backfill replays: they share the run's replay key and its settings overrides.
REPLAY_STEPS = frozenset({"drift", "decide", "train", "evaluate", "gate"})
#: ``ct_ops``: a rollback or a forced promotion, chosen by the run's Params (``action``, ``version``, ``reason``).
OVERRIDE_STEP = "override"
#: Every step an operator may run.
STEPS = RUN_KEY_STEPS | {"ingest", OVERRIDE_STEP}
