"""The approval task: a promotion that waits for a person, answered in Airflow's own UI.

With ``gate.require_approval`` on, a live gate whose evidence says *promote* records ``pending``
and moves nothing. :class:`CtApprovalOperator` (Airflow's ``HITLOperator``) then asks the
approvers, showing the gate's evidence, and waits in Airflow's *awaiting input* state, which holds
no worker slot. Its answer goes to ``python -m ml approval`` (the ``apply_approval`` task), which
moves ``@champion`` by the gate's compare-and-set or records the refusal:

* **Approve**: the promotion, recorded with who approved it and their comment;
* **Reject**: ``reject: not approved by <user>: <comment>``;
* no answer within ``gate.approval_timeout_hours``: ``expired`` (the scheduler ends the wait).

Any other gate outcome (a reject, a backfill, approvals off) skips this task: nobody is asked.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowSkipException

from ct_airflow.ui.links import airflow_base_url, report_url

if TYPE_CHECKING:
    from airflow.sdk import Context

APPROVE, REJECT = "Approve", "Reject"
# Kept in step with ml.release.promote (not imported: DAG files stay light at parse time).
PENDING, EXPIRED = "pending", "expired"


class CtApprovalOperator(HITLOperator):
    """Ask ``gate.approvers`` to approve or reject the pending promotion of ``gate_task_id``'s run.

    Returns (as its XCom) ``{"answer": "approve" | "reject" | "expired", "by": name, "comment": text}``.
    """

    def __init__(self, *, gate_task_id: str = "gate", **kwargs: Any) -> None:
        from ml.config import load_settings

        gate = load_settings().gate
        kwargs.pop("params", None)  # the DAG's own Params; the approval form asks only for a comment
        super().__init__(
            subject="Promote a candidate model?",  # replaced by the candidate's own line when asked
            options=[APPROVE, REJECT],
            params={"comment": Param("", type="string", description="Why (kept in ct's decision history)")},
            assigned_users=[{"id": name, "name": name} for name in gate.approvers] or None,
            response_timeout=timedelta(hours=gate.approval_timeout_hours),
            **kwargs,
        )
        self.gate_task_id = gate_task_id

    def execute(self, context: Context) -> Any:
        result = context["ti"].xcom_pull(task_ids=self.gate_task_id) or {}
        if result.get("decision") != PENDING:
            raise AirflowSkipException(f"no approval needed: the gate decided {result.get('decision')!r}")
        self.subject = f"Promote v{result['candidate_version']} (now v{result.get('champion_version')})?"
        self.body = f"{result['approval_body']}\n\n[The decision in the ct dashboard]({dashboard_url(result)})"
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("error_type") == "timeout":  # nobody answered in time: the scheduler ended the wait
            self.log.info("Nobody answered within %s: the promotion expires", self.response_timeout)
            return {"answer": EXPIRED, "by": None, "comment": ""}
        response = super().execute_complete(context, event)
        user = response.get("responded_by_user") or {}
        answer = "approve" if response["chosen_options"] == [APPROVE] else "reject"
        comment = str((response.get("params_input") or {}).get("comment") or "")
        self.log.info("%s by %s: %s", answer, user.get("name"), comment or "(no comment)")
        return {"answer": answer, "by": user.get("name") or user.get("id"), "comment": comment}


def dashboard_url(result: dict[str, Any]) -> str:
    from ml.config import load_settings

    return report_url(result, load_settings().lake_uri, airflow_base_url())
