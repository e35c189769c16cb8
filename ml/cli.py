"""``python -m ml <step>``: one command per pipeline step, the same in a subprocess and in a pod.

Inputs are ids and URIs. Logs go to stderr. The last line of stdout is one JSON object, which the
Airflow operator turns into the task's XCom; in a pod its operator also asks for it in
``/airflow/xcom/return.json`` (the contract, exit codes included, is :mod:`ml.contract`).
A step with nothing to do prints ``{"skip": "<reason>"}`` and exits 0. A failure prints
``{"error": ..., "error_type": ..., "retryable": ...}`` and exits with the code of its kind
(:mod:`ml.errors`): 1 a failure to act on, 2 refused arguments, 75 a service did not answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from ml.config import REPLAY_SECTIONS, Settings, apply_overrides, load_settings
from ml.contract import XCOM_DIR, XCOM_ENV, XCOM_FILE
from ml.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CtError,
    InfrastructureUnavailable,
    NothingToDo,
    UsageError,
)
from ml.layout import id_problem
from ml.outage import outage
from ml.storage import Lake

log = logging.getLogger("ml")

Step = Callable[[argparse.Namespace, Settings, Lake], dict[str, Any]]


def _checked_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _when(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from exc
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone; add +00:00 (or Z) for UTC")
    return when


def _overrides(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"--settings must be a JSON object, got {value!r}")
    return parsed


HELP_EPILOG = """\
Run keys: every step of one pipeline run takes the same --run-key, the Airflow run's id
(scheduled__2026-12-07T03:00:00+00:00, manual__..., backfill__...) or any id you choose for a
run by hand. Records, checkpoints and the registered version are keyed by it, so a step rerun
with the same key finds its finished work and redoes nothing; a new key is a new run.

Environment:
  CT_CONFIG            path to your ct.yaml (default: the embedded profile, everything under CT_HOME)
  CT_HOME              the embedded profile's folder (default: ./.ct): lake, MLflow, PostgreSQL
  CT_<SECTION>__<FIELD> one setting, over the file: CT_TRAIN__EPOCHS=3, CT_GATE__MARGIN=0.01
  CT_<FIELD>           a top-level setting: CT_LAKE_URI, CT_MLFLOW_TRACKING_URI, CT_LABELS=cat,dog
  CT_LOG_LEVEL         DEBUG, INFO (default), WARNING
See what is in effect, and where each value comes from: python -m ml config show
Exit codes: 0 done or nothing to do, 1 failed (act on the error), 2 refused (bad arguments or
configuration: retrying cannot help), 75 a service did not answer (retry later)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused command line raises :class:`UsageError` (a JSON line, exit 2), never exits.

    Every ``--help`` ends with what a run key is and which environment variables matter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", HELP_EPILOG)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Great Expectations logs two hundred lines of its own set-up at INFO on every validation: its warnings only."""
    return record.levelno >= logging.WARNING or not record.name.startswith("great_expectations")


def _refuse_live_overrides(args: argparse.Namespace, lake: Lake) -> None:
    """Settings overrides are a replay's: a live run decides with ct.yaml, which its records can name."""
    from ml.data.window import load_window

    replay = args.replay if args.step == "drift" else load_window(lake, args.run_key).backfill
    if not replay:
        raise UsageError("--settings applies only to a backfill's replay (drift --replay); a live run decides with "
                         "ct.yaml and the CT_* environment")  # fmt: skip


def step_ingest(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.data.ingest import ingest_many

    return ingest_many(lake, args.batch_id, settings)


def _run_time(args: argparse.Namespace) -> float | None:
    return args.as_of.timestamp() if getattr(args, "as_of", None) else None


def step_drift(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.data.window import plan_window
    from ml.decide.drift import detect_drift
    from ml.release import registry
    from ml.release.promote import ACCURACY_TAG
    from ml.release.world import live_world, world_at

    if args.replay and args.as_of is None:
        raise UsageError("drift --replay needs --as-of: the moment the backfill replays")
    as_of = _run_time(args) or time.time()
    world = partial(world_at, settings, lake, as_of) if args.replay else partial(live_world, settings, lake)
    window = plan_window(lake, settings, args.run_key, world, as_of=as_of, replay=args.replay)
    champion_model, recorded = None, None
    if window.champion_version is not None and window.new_batches:
        mlflow_client = registry.client(settings)
        version = registry.get_version(mlflow_client, settings.model_name, window.champion_version)
        champion_model = registry.load_model(settings, version)
        recorded = float(version.tags[ACCURACY_TAG]) if ACCURACY_TAG in version.tags else None
    verdict = detect_drift(lake, settings, window, champion_model, recorded)
    return {
        "run_key": args.run_key,
        "as_of": window.to_dict()["as_of_iso"],
        "backfill": window.backfill,
        "champion_version": window.champion_version,
        "new_batches": window.new_batches,
        "new_images": window.new_images,
        "drift_detected": verdict["drift_detected"],
        "fired_detectors": verdict.get("fired_detectors", []),
        "drifted_features": verdict.get("drifted_features", []),
        "drifted_share": verdict.get("drifted_share"),
        "quality": verdict.get("quality"),
        "harm": (verdict.get("harm") or {}).get("summary"),
        "findings": [f["message"] for f in verdict.get("findings") or []],
        "skipped": verdict.get("skipped"),
        "report_uri": verdict["report_uri"],
        "html_uri": verdict.get("html_uri"),
    }


def step_decide(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml import layout
    from ml.data.window import load_window
    from ml.decide import policy
    from ml.release.world import champion_age_days

    recorded = policy.recorded_decision(lake, args.run_key)
    if recorded is None:
        window = load_window(lake, args.run_key)
        drift = lake.read_json_or(layout.report(layout.RETRAIN_DAG, args.run_key, "drift.json"), {})
        as_of = window.as_of if window.as_of is not None else time.time()
        age_days = None
        if window.champion_version is not None and settings.policy.max_model_age_days is not None:
            age_days = champion_age_days(settings, window.champion_version, as_of)
        if window.backfill:  # the memory of the run's time, as its window pinned it; never today's
            state = policy.PolicyState.from_dict((window.sources.get("policy") or {}).get("state") or {})
            policy.describe_replay(lake, window, args.settings_overrides, args.force)
        else:
            state = policy.load_state(lake)
        # ct_monitor's latest verdict on the champion's live traffic; a replay never reads today's
        live = None if window.backfill else lake.read_json_or(layout.MONITOR_LATEST, None)
        decision, new_state = policy.decide(window, drift, settings.policy, state, as_of, age_days, force=args.force,
                                            live=live)  # fmt: skip
        recorded = policy.record_decision(lake, window, decision, state, new_state, as_of, backfill=window.backfill)
    else:
        policy.settle(lake, recorded)  # finish what a killed attempt committed but did not apply
    log.info("decide %s: %s", args.run_key, recorded["summary"])
    if not recorded["retrain"]:
        return {"skip": recorded["summary"], **recorded}
    return recorded


def step_train(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.learn.train import train

    return train(lake, settings, args.run_key)


def step_evaluate(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.learn.evaluate import evaluate

    return evaluate(lake, settings, args.run_key)


def step_gate(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.release.promote import PENDING, approval_markdown, headline, run_gate

    record = run_gate(lake, settings, args.run_key)
    keep = (
        "run_key",
        "decision",
        "reasons",
        "candidate_version",
        "champion_version",
        "eval_rows",
        "gate_uri",
        "gate_md_uri",
        "already_done",
        "backfill",
        "as_of",
        "replay",
        "superseded_champions",
        "history_key",  # the decision's page in the dashboard: /ct/decision/<its name>
        "spending",
        "power",
    )
    summary = {k: record.get(k) for k in keep}
    summary["headline"] = headline(record)
    if record["decision"] == PENDING:
        summary["approval_body"] = approval_markdown(record)
    summary["candidate_accuracy"] = record["metrics"]["candidate"]["accuracy"]
    summary["champion_accuracy"] = (record["metrics"].get("champion") or {}).get("accuracy")
    summary["p_value"] = record["checks"].get("significance", {}).get("p_value")
    summary["non_inferiority"] = record["checks"].get("non_inferiority", {}).get("passed")
    return summary


def step_override(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.release.promote import headline, run_override

    run_key = args.run_key or f"cli-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"
    version = args.to if args.step == "rollback" else args.version
    record = run_override(lake, settings, args.step, str(version), args.reason, run_key, actor=args.actor,
                          as_of=_run_time(args))  # fmt: skip
    return {**record, "headline": headline(record)}


def step_approval(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.release.promote import headline, run_approval

    record = run_approval(lake, settings, args.run_key, args.answer, args.by or None, args.comment)
    keep = ("run_key", "decision", "reasons", "candidate_version", "champion_version", "approval", "history_key",
            "decision_uri", "already_done", "backfill")  # fmt: skip
    return {**{k: record.get(k) for k in keep}, "headline": headline(record)}


def step_retrain(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    """drift, decide, train, evaluate and gate of one run in this process: ct_retrain's steps, without Airflow.

    Without ``--run-key`` it is a new run (``retrain-<UTC time>``). With the key of a run that has
    decided already, nothing is redone: the steps return what that run recorded, and the result says so.
    """
    from ml.decide.policy import recorded_decision

    args.run_key = args.run_key or f"retrain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    earlier = recorded_decision(lake, args.run_key)
    note = ""
    if earlier:
        note = (f"run {args.run_key} ran before (its decision: {earlier['summary']}); its steps are not redone. "
                "Run retrain without --run-key (or with a new one) to decide on the data there is now")  # fmt: skip
        log.warning("%s", note)
    results: dict[str, Any] = {}
    for name in ("drift", "decide", "train", "evaluate", "gate"):
        step = argparse.Namespace(
            **{**vars(args), "step": name, "as_of": None, "replay": None, "settings_overrides": {}}
        )
        results[name] = result = STEPS[name](step, settings, lake)
        log.info("%s: %s", name, result.get("summary") or result.get("headline") or "done")
        if "skip" in result:
            return {"skip": f"{name}: {result['skip']}", "run_key": args.run_key, "steps": results,
                    **({"rerun": note} if note else {})}  # fmt: skip
    return {**results.pop("gate"), "steps": results, **({"rerun": note} if note else {})}


def step_land(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.data.land import land

    report = land(lake, settings, args.source, args.batch_id, args.event_time, args.dry_run)
    if args.dry_run:  # a person reads this: one line per failed rule and what to do, then the JSON line
        for rule in report["rules"]:
            more = rule["files"] - len(rule["first"])
            files = ", ".join(rule["first"]) + (f" and {more:,} more" if more > 0 else "")
            seen = f"; observed {rule['observed']}" if "observed" in rule else ""
            what = (
                f"{rule['files']:,} file{'s' if rule['files'] != 1 else ''}: {files}" if rule["files"] else "the batch"
            )
            print(f"refused  {rule['rule']}: {what}{seen}", file=sys.stderr)
            if rule.get("fix"):
                print(f"         fix: {rule['fix']}", file=sys.stderr)
        print(f"would be {report['would_be']}: {report['accepted']:,} of {report['files']:,} files accepted",
              file=sys.stderr)  # fmt: skip
    return report


def step_config(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    """``check``: the file and environment load (else exit 2 already), the network builds, init_weights reads."""
    from ml.config import effective_settings

    rows = effective_settings()
    if args.action == "show":
        width = max(len(name) for name, _, _ in rows)
        for name, value, source in rows:
            sys.stdout.write(f"{name:<{width}}  {json.dumps(value)}  ({source})\n")
    checks = {"settings": "valid", "network": _check_network(settings)}
    if settings.train.init_weights:
        checks["init_weights"] = _check_init_weights(settings)
    changed = sum(source != "default" for _, _, source in rows)
    return {"config": "valid", "file": os.environ.get("CT_CONFIG") or "(none: the embedded defaults)",
            "settings_changed": changed, "checks": checks}  # fmt: skip


def _check_network(settings: Settings) -> str:
    from ml.learn.train import new_model

    model = new_model(settings)  # ConfigError (exit 2) if it cannot be built or gives the wrong output
    parameters = sum(p.numel() for p in model.parameters())
    return f"{settings.train.network}: {parameters:,} parameters, {len(settings.labels)} outputs"


def _check_init_weights(settings: Settings) -> str:
    from ml.learn import warm_start
    from ml.learn.train import new_model

    assert settings.train.init_weights is not None
    init = warm_start.resolve(settings, settings.train.init_weights)
    loaded = warm_start.apply(new_model(settings), init)
    return f"{loaded['loaded']} of {loaded['tensors']} tensors match (sha256 {init.sha256[:12]})"


def step_freeze_golden(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.data.ingest import freeze_golden

    return freeze_golden(lake, args.batch_id, args.name, settings)


def step_monitor(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.monitor.live import monitor

    record = monitor(lake, settings, args.run_key, args.as_of.timestamp() if args.as_of else None)
    keep = ("run_key", "champion_version", "served_rows", "alarm", "alarms", "estimate", "label_lag_hours",
            "report_uri", "already_done")  # fmt: skip
    return {**{k: record.get(k) for k in keep}, "realized": record["realized"]["champion"],
            "live_drift": record["drift"].get("drift_detected"), "problems": record["problems"]}  # fmt: skip


def step_harvest(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.monitor.harvest import harvest

    return harvest(lake, args.feedback, args.batch_id)


def step_serve(args: argparse.Namespace, settings: Settings, lake: Lake) -> dict[str, Any]:
    from ml.serve.app import serve

    return serve(settings, host=args.host, port=args.port)


STEPS: dict[str, Step] = {
    "ingest": step_ingest,
    "drift": step_drift,
    "decide": step_decide,
    "train": step_train,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "rollback": step_override,
    "promote": step_override,
    "approval": step_approval,
    "freeze-golden": step_freeze_golden,
    "land": step_land,
    "retrain": step_retrain,
    "config": step_config,
    "serve": step_serve,
    "monitor": step_monitor,
    "harvest": step_harvest,
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ml", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("CT_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="step", required=True, parser_class=_Parser)
    ingest = sub.add_parser("ingest", help="curate or quarantine committed landing batches")
    ingest.add_argument(
        "--batch-id", action="append", type=_checked_id, help="repeatable; default: every pending batch"
    )
    for name, text in [("drift", "plan the data window and compare it with the champion's data"),
                       ("decide", "decide whether to retrain, with reasons"),
                       ("train", "train and register a candidate"),
                       ("evaluate", "score candidate and champion on the same rows"),
                       ("gate", "decide promotion and move @champion with compare-and-set")]:  # fmt: skip
        step = sub.add_parser(name, help=text)
        step.add_argument("--run-key", required=True, type=_checked_id, help="the run this step belongs to "
                          "(see Run keys below)")  # fmt: skip
        step.add_argument("--settings", dest="settings_overrides", type=_overrides, default={},
                          help="a backfill's settings overrides as JSON, e.g. '{\"gate\": {\"margin\": 0.01}}' "
                          f"(sections: {', '.join(REPLAY_SECTIONS)}); validated like ct.yaml")  # fmt: skip
        if name == "drift":
            step.add_argument("--as-of", type=_when, help="the time the run stands for (ISO 8601 with a zone); "
                              "it sees only the data available then. Default: now")  # fmt: skip
            step.add_argument("--replay", type=_checked_id, help="a backfill run, and its replay's id: only the data "
                              "available at --as-of, the champion and policy memory of then (from the history); "
                              "never moves @champion, spends no alpha, keeps no memory. Without it the run is live: "
                              "today's @champion and memory, all curated data but what producers dated later")  # fmt: skip
        if name == "decide":
            step.add_argument("--force", action="store_true", help="retrain whatever the policy says")
    for name, target, text in [("rollback", "--to", "point @champion back at an earlier version"),
                               ("promote", "--version", "force @champion onto a version, bypassing the gate")]:  # fmt: skip
        step = sub.add_parser(name, help=text)
        step.add_argument(target, required=True, type=_checked_id, help="registered model version")
        step.add_argument("--reason", required=True, help="why; recorded in the decision history")
        step.add_argument("--run-key", type=_checked_id, help="idempotency key (default: a timestamp)")
        step.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who asked, for the record")
        step.add_argument("--as-of", type=_when, help="when it takes effect in ct's history (ISO 8601); default now")
    approval = sub.add_parser("approval", help="settle a gate decision that waits for an approver")
    approval.add_argument("--run-key", required=True, type=_checked_id)
    approval.add_argument("--answer", required=True, choices=["approve", "reject", "expired"])
    approval.add_argument("--by", default="", help="who answered (empty for an expired approval)")
    approval.add_argument("--comment", default="", help="the approver's comment")
    retrain = sub.add_parser("retrain", help="run drift, decide, train, evaluate and gate for one run key, here "
                             "(what the ct_retrain DAG runs, for a pilot without Airflow)")  # fmt: skip
    retrain.add_argument("--run-key", type=_checked_id, help="default: a new run, retrain-<UTC time>; the key of "
                         "an earlier run returns what it recorded")  # fmt: skip
    retrain.add_argument("--force", action="store_true", help="retrain whatever the policy says")
    land = sub.add_parser("land", help="land a folder of labelled images (or an S3 prefix) as a committed batch",
                          description="Copy <source>/<label>/<file> to landing/<batch-id>/images/<label>/<file> "
                          "and commit it; --dry-run reports what ingest would accept and refuse, landing nothing")  # fmt: skip
    land.add_argument("source", help="a folder with one subfolder per label, or s3://bucket/prefix; or a CSV of "
                      "late labels (request_id,label) for served predictions: a feedback batch")  # fmt: skip
    land.add_argument("--batch-id", required=True, type=_checked_id, help="the new batch's id, e.g. photos-2026-12-07")
    land.add_argument("--event-time", type=_when, help="when the images were taken (ISO 8601 with a zone); "
                      "backfills replay the batch from then. Default: when it is ingested")  # fmt: skip
    land.add_argument("--dry-run", action="store_true", help="run ingest's checks on a scratch copy; land nothing")
    config = sub.add_parser("config", help="check ct.yaml and the CT_* environment, or show the effective settings")
    config.add_argument("action", choices=["check", "show"], help="check: validate, build the network, read "
                        "init_weights; show: also print every setting with its source (default, file, environment)")  # fmt: skip
    monitor = sub.add_parser("monitor", help="judge the champion on its live traffic: drift of served images, "
                             "a label-free accuracy estimate, realized accuracy of late labels")  # fmt: skip
    monitor.add_argument("--run-key", required=True, type=_checked_id, help="the run this step belongs to")
    monitor.add_argument("--as-of", type=_when, help="the end of the window it reads (ISO 8601 with a zone); "
                         "default now")  # fmt: skip
    harvest = sub.add_parser("harvest", help="land the served images that feedback batches labelled as a new "
                             "training batch (needs serve.keep_images); ingest then checks it like any batch")  # fmt: skip
    harvest.add_argument("--feedback", action="append", required=True, type=_checked_id,
                         help="an ingested feedback batch (repeatable)")  # fmt: skip
    harvest.add_argument("--batch-id", required=True, type=_checked_id, help="the new landing batch's id")
    serve = sub.add_parser("serve", help="serve @champion over HTTP (MLflow's /invocations), following the alias, "
                           "with /ready, /metrics and a prediction log; runs until SIGTERM or Ctrl-C")  # fmt: skip
    serve.add_argument("--host", help="default: serve.host (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: serve.port (5002)")
    golden = sub.add_parser("freeze-golden", help="validate a landing batch into a frozen golden eval set")
    golden.add_argument("--batch-id", required=True, type=_checked_id)
    golden.add_argument("--name", required=True, type=_checked_id)
    return parser


def emit(result: dict[str, Any]) -> None:
    line = json.dumps(result, default=str, sort_keys=True)
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 speaks for the step
        log.info("rank %s: %s", os.environ["RANK"], line)
        return
    if os.environ.get(XCOM_ENV) == "1":  # only a pod whose operator reads the XCom sidecar asks for this
        xcom = Path(XCOM_DIR)
        xcom.mkdir(parents=True, exist_ok=True)
        (xcom / XCOM_FILE).write_text(line)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _error(exc: BaseException, **extra: Any) -> dict[str, Any]:
    return {"error": str(exc), "error_type": type(exc).__name__,
            "retryable": isinstance(exc, InfrastructureUnavailable), **extra}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one step and return its exit code; the last stdout line is always one JSON object."""
    step = "the command"
    try:
        args = get_args_parser().parse_args(argv)
        step = args.step
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
        if logging.getLogger().level > logging.DEBUG:
            for handler in logging.getLogger().handlers:
                handler.addFilter(_quiet_libraries)
        # A backfill's overrides apply to every step of its run, validated like ct.yaml (exit 2 if not valid).
        settings = load_settings()
        lake = Lake.from_uri(settings.lake_uri)
        if getattr(args, "settings_overrides", None):
            _refuse_live_overrides(args, lake)
            settings = apply_overrides(settings, args.settings_overrides)
        result = STEPS[args.step](args, settings, lake)
    except CtError as exc:
        if isinstance(exc, NothingToDo):
            emit({"skip": str(exc)})
            return EXIT_OK
        log.error("%s failed: %s", step, exc)
        emit(_error(exc))
        return exc.exit_code
    except SystemExit as exc:  # --help
        return EXIT_OK if not exc.code else EXIT_USAGE
    except Exception as exc:  # keep the step contract (a JSON last line) even for a bug or an outage
        unavailable = outage(exc)
        if unavailable is not None:
            log.error("%s failed: %s", step, unavailable)
            emit(_error(unavailable))
            return EXIT_UNAVAILABLE
        log.exception("%s failed unexpectedly", step)
        emit(_error(exc, error=f"{type(exc).__name__}: {exc}", unexpected=True))
        return EXIT_FAILED
    emit(result)
    return EXIT_OK
