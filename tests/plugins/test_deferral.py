"""The pod task defers while its pod runs, then gives the step's result ct's meaning.

No cluster exists here, so the Kubernetes API is mocked at its edge (``cluster`` in conftest.py: the
``CoreV1Api`` client and the exec stream that reads the sidecar's ``return.json``). The provider's
own code runs on top of it: ``execute`` creates or finds the pod and raises ``TaskDeferred`` with the
provider's ``KubernetesPodTrigger``; ``trigger_reentry`` (where the task resumes after the trigger
fires) reads the logs and the XCom and cleans up, and ct maps the result to a skip, a failure of
its kind, or the task's XCom. The trigger itself (the async wait in the triggerer) is the
provider's, unchanged, and is not run here.
"""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from ct_airflow.operators.contract import StepFailed, StepRefused, StepUnavailable
from ct_airflow.operators.step import ct_step
from tests.plugins.conftest import RUN_KEY


@pytest.fixture
def train(kube_settings, cluster):  # type: ignore[no-untyped-def]
    """The train task as a worker builds it from ct_retrain under the kubernetes runner."""
    from datetime import timedelta

    return ct_step(task_id="train", step="train", retries=2, execution_timeout=timedelta(hours=6))


def defer(task, context) -> TaskDeferred:  # type: ignore[no-untyped-def]
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    return deferred.value


def resume(task_id: str, context, event_status: str, pod_name: str):  # type: ignore[no-untyped-def]
    """A fresh task instance (the worker parses the DAG again) resuming where the trigger left off."""
    task = ct_step(task_id=task_id, step=task_id)
    event = {"status": event_status, "name": pod_name, "namespace": "ct", "message": f"pod {event_status}"}
    return task, lambda: task.trigger_reentry(context, event)


def test_execute_creates_the_pod_and_defers_to_the_providers_trigger(train, cluster, task_context) -> None:
    from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger

    context = task_context("train")
    deferred = defer(train, context)

    [created] = cluster.created
    pod_name = created["metadata"]["name"]
    assert created["spec"]["containers"][0]["args"] == ["train", "--run-key", RUN_KEY]
    trigger = deferred.trigger
    assert isinstance(trigger, KubernetesPodTrigger)
    assert (trigger.pod_name, trigger.pod_namespace) == (pod_name, "ct")
    assert deferred.method_name == "trigger_reentry"
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow.providers.cncf.kubernetes.triggers.pod.KubernetesPodTrigger"
    # Logs reach the task log while the pod runs, not only at the end.
    assert kwargs["get_logs"] is True and kwargs["logging_interval"] == 30
    assert kwargs["on_finish_action"] == "delete_succeeded_pod"
    # execution_timeout (6 h) becomes the trigger's deadline, so a stuck pod cannot wait forever.
    assert "_execution_deadline" in kwargs["trigger_kwargs"] and deferred.timeout is not None
    # The pod's identity is kept for the next try (durable), and pushed where the UI shows it.
    assert context["task_state_store"].get("pod_identifier") == {"name": pod_name, "namespace": "ct"}
    context["ti"].xcom_push.assert_any_call(key="pod_name", value=pod_name)


def test_a_new_try_reattaches_to_the_running_pod(train, cluster, task_context) -> None:
    from kubernetes.client import V1PodList

    running = cluster.pod("ct-train-abc123", labels={"dag_id": "ct_retrain", "task_id": "train"})
    cluster.pods[running.metadata.name] = running
    cluster.api.list_namespaced_pod.return_value = V1PodList(items=[running])
    context = task_context("train")
    context.pop("task_state_store")  # a worker that died before storing the pod's identity

    deferred = defer(train, context)

    assert cluster.created == [], "no second pod for the same task instance"
    assert deferred.trigger.pod_name == "ct-train-abc123"
    selector = cluster.api.list_namespaced_pod.call_args.kwargs["label_selector"]
    for label in ("dag_id=ct_retrain", "task_id=train", "run_id=", "app.kubernetes.io/part-of=ct", "ct.step=train",
                  "already_checked!=True"):  # fmt: skip
        assert label in selector


def test_a_new_try_collects_a_pod_that_finished_while_no_worker_watched(train, cluster, task_context) -> None:
    from kubernetes.client import V1PodList

    labels = {"dag_id": "ct_retrain", "task_id": "train"}
    cluster.pods["ct-train-abc123"] = cluster.pod("ct-train-abc123", labels=labels)
    cluster.finish("ct-train-abc123", exit_code=0, result={"skip": "no reason to retrain"})
    cluster.api.list_namespaced_pod.return_value = V1PodList(items=[cluster.pods["ct-train-abc123"]])

    with pytest.raises(AirflowSkipException, match="no reason to retrain"):
        train.execute(task_context("train"))  # no deferral: the result is read at once
    assert cluster.created == [] and cluster.deleted == ["ct-train-abc123"]


@pytest.fixture
def finished(train, cluster, task_context):  # type: ignore[no-untyped-def]
    """``finished(exit_code, result, ...)``: run train until it defers, end its step, resume the task."""

    def run(exit_code: int, result: dict | None, *, reason: str | None = None):  # type: ignore[no-untyped-def]
        context = task_context("train")
        pod_name = defer(train, context).trigger.pod_name
        cluster.finish(pod_name, exit_code=exit_code, result=result, reason=reason)
        task, reentry = resume("train", context, "success" if exit_code == 0 else "failed", pod_name)
        return task, pod_name, reentry

    return run


def test_a_normal_result_is_the_tasks_xcom_and_feeds_the_links(finished, cluster) -> None:
    from ct_airflow.ui.links import MlflowModelLink, MlflowRunLink

    result = {"model_version": "7", "run_id": "abc", "run_key": RUN_KEY}
    task, pod_name, reentry = finished(0, result)
    assert reentry() == result
    assert task.step_result == result
    assert MlflowModelLink().get_link(task, ti_key=None).endswith("/#/models/ct-classifier/versions/7")
    assert MlflowRunLink().get_link(task, ti_key=None).endswith("/#/runs/abc")
    assert cluster.deleted == [pod_name], "a succeeded pod is deleted"
    # The pod's log lines are fetched into the task log: since the last fetch, not followed (logging_interval).
    assert cluster.api.read_namespaced_pod_log.call_args.kwargs["follow"] is False


def test_a_result_read_before_the_sidecar_stop_lost_its_socket_is_kept(finished, cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The exec websocket can close while the sidecar shuts down, after return.json was read."""
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager
    from websocket import WebSocketConnectionClosedException

    def closed(manager, pod):  # type: ignore[no-untyped-def]
        raise WebSocketConnectionClosedException("Connection to remote host was lost.")

    monkeypatch.setattr(PodManager, "extract_xcom_kill", closed)
    result = {"model_version": "7", "run_id": "abc", "run_key": RUN_KEY}
    task, pod_name, reentry = finished(0, result)
    assert reentry() == result and task.step_result == result  # succeeded: no retry reruns the step
    assert [body["metadata"]["name"] for body in cluster.created] == [pod_name], "one pod, never a second"


def test_a_skip_result_skips_the_task(finished, cluster) -> None:
    _, pod_name, reentry = finished(0, {"skip": "no reason to retrain: no new data"})
    with pytest.raises(AirflowSkipException, match="no reason to retrain"):
        reentry()
    assert cluster.deleted == [pod_name]


@pytest.mark.parametrize(
    ("exit_code", "result", "reason", "outcome", "message"),
    [
        (75, {"error": "MLflow did not answer", "error_type": "InfrastructureUnavailable", "retryable": True},
         "Error", StepUnavailable, r"train` failed: MLflow did not answer \(retryable: exit 75\)"),
        (2, {"error": "'../x' is not a valid id", "error_type": "UsageError", "retryable": False},
         "Error", StepRefused, "is not a valid id"),
        (1, {"error": "no data window for run", "error_type": "CtError", "retryable": False},
         "Error", StepFailed, "no data window"),
        (137, None, "OOMKilled", StepFailed, r"container base OOMKilled \(exit 137\)"),
    ],
    ids=["outage-retried", "refused-not-retried", "failure", "killed-without-result"],
)  # fmt: skip
def test_a_failed_step_fails_the_task_by_its_kind(
    finished, cluster, exit_code, result, reason, outcome, message
) -> None:  # type: ignore[no-untyped-def]
    _, pod_name, reentry = finished(exit_code, result, reason=reason)
    with pytest.raises(outcome, match=message) as failure:
        reentry()
    # Only refused arguments skip Airflow's retries; an outage must be retried.
    assert isinstance(failure.value, AirflowFailException) == (outcome is StepRefused)
    assert cluster.deleted == [], "a failed pod is kept for inspection"
    patched = cluster.api.patch_namespaced_pod.call_args.kwargs
    assert patched["name"] == pod_name and patched["body"]["metadata"]["labels"] == {"already_checked": "True"}


def test_a_retryable_error_line_is_retried_whatever_the_exit_code(finished) -> None:
    _, _, reentry = finished(1, {"error": "S3 did not answer", "retryable": True})
    with pytest.raises(StepUnavailable, match="retryable: exit 1"):
        reentry()


def test_a_result_that_cannot_be_read_fails_rather_than_guessing(finished, cluster) -> None:
    _, pod_name, reentry = finished(0, {"skip": "nothing to do"})
    del cluster.pods[pod_name]  # garbage-collected between the trigger's event and the task resuming
    with pytest.raises(StepFailed, match="JSON result could not be read"):
        reentry()


def test_a_timed_out_pod_does_not_keep_its_gpu(train, cluster, task_context) -> None:
    context = task_context("train")
    pod_name = defer(train, context).trigger.pod_name
    cluster.pods[pod_name] = cluster.pod(pod_name, phase="Running", labels=cluster.pods[pod_name].metadata.labels)
    _, reentry = resume("train", context, "timeout", pod_name)
    with pytest.raises(StepFailed, match="pod timeout"):
        reentry()
    assert cluster.deleted == [pod_name]
