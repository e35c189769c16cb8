"""Validate a batch with the Great Expectations suites kept in ``ml/data/suites/``, plus ingest's own checks.

Two suites run on one ephemeral GX context: ``manifest.json`` on the manifest (one row per file) and
``class_balance.json`` on the batch's label shares. Each expectation's ``meta`` names the rule, says
why it exists and whether it is a ``row`` rule (offending rows are listed and may be dropped) or a
``batch`` rule (the whole batch fails).

Some rules cannot wait for a manifest: they decide whether a file is read at all (its name, place,
extension and size), what a decoded file may be (its format), or whether the batch can be looked
at (its name, root and commit marker). Ingest evaluates those itself; :data:`INGEST_CHECKS` is
where they are documented, and their failures become the same :class:`RuleFailure` as GX's, in
the same report.
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from ml.config import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SUITES = ("manifest.json", "class_balance.json")
SAMPLE_ROWS = 20
INGEST_CHECK = "ingest check"  # the ``expectation`` of a rule that ingest evaluates itself


@dataclass(frozen=True)
class Check:
    """A rule that ingest evaluates itself (see the module docstring)."""

    rule: str
    level: str  # row | batch
    why: str
    fix: str = ""  # what to do about a failure, where one sentence fits every case


_DROP = " (or set ingest.on_bad_rows: drop to drop such files with a record)"

#: Ingest's own rules. Row rules are evaluated on every listed file; batch rules stop the batch
#: before any file is read.
INGEST_CHECKS = {check.rule: check for check in (
    Check("file_name", "row", "every path is valid UTF-8 without control characters or backslashes; "
          "such a file is never read (its uri is shown escaped, e.g. bad\\xff.png)"),
    Check("layout", "row", "every file is at images/<label>/<file>; files anywhere else in the batch (label "
          "folders directly under the batch, files directly under images/ or nested below a label folder) are "
          "never read",
          fix="move each file to landing/<batch_id>/images/<label>/<file>: label folders go directly under "
          "images/, files directly into their label folder; the sample rows say where each belongs"),
    Check("file_extension", "row", "every file's lower-cased suffix is in ingest.extensions; other files are never read",
          fix="remove the listed files from the batch, or add their suffix to ingest.extensions" + _DROP),
    Check("file_size", "row", "every file is at most ingest.max_file_bytes, from the listing; larger files are never read",
          fix="shrink the listed files, or raise ingest.max_file_bytes" + _DROP),
    Check("image_format", "row", "every file decodes as a format that ingest.extensions allows (a JPEG named .png "
          "passes; a PSD, ICO or EPS named .png does not, and its pixels are never decoded)",
          fix="convert the listed files to an image format ingest.extensions allows" + _DROP),
    Check("batch_name", "batch", "the landing folder's name is a valid batch id; an invalid-named folder is "
          "quarantined under invalid-name-<sha256 of its name>, never read"),
    Check("batch_root", "batch", "landing/<batch_id> and its images/ are real folders at exactly that place in "
          "the lake, not symlinks to elsewhere; nothing is read otherwise"),
    Check("commit_marker", "batch", "the _COMMITTED marker is a regular file, not a folder or a symlink, and any "
          "JSON in it states a valid event_time"),
    Check("ingest_error", "batch", "ingest raised an unexpected error on this batch; the others went on"),
    # A feedback batch (landing/<batch_id>/feedback.csv of late labels: ml.data.feedback) is checked by these.
    Check("feedback_columns", "batch", "feedback.csv is a UTF-8 CSV whose header names request_id and label"),
    Check("feedback_rows", "batch", "feedback.csv has at least one row, each with a request id"),
    Check("feedback_labels", "batch", "every label in feedback.csv is one of labels"),
    Check("feedback_unique", "batch", "each request id in feedback.csv has one label"),
)}  # fmt: skip
ROW_CHECKS = tuple(rule for rule, check in INGEST_CHECKS.items() if check.level == "row")


@dataclass(frozen=True)
class RuleFailure:
    rule: str
    level: str  # row | batch
    expectation: str
    why: str
    unexpected_count: int
    observed: Any = None
    sample_rows: list[dict[str, str]] = field(default_factory=list)  # uri, and the decoder's error if any
    uris: tuple[str, ...] = ()  # every offending row, for dropping; not written to reports
    fix: str = ""  # what to do about it, where the rule knows

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "level": self.level,
            "expectation": self.expectation,
            "why": self.why,
            "unexpected_count": self.unexpected_count,
            "observed": self.observed,
            "sample_rows": self.sample_rows,
            **({"fix": self.fix} if self.fix else {}),
        }


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    evaluated: int
    failures: list[RuleFailure]
    gx_results: list[dict[str, Any]]
    checks: tuple[str, ...] = ()  # the ingest checks evaluated besides GX (for the HTML page)

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "expectations_evaluated": self.evaluated,
            "failures": [f.summary() for f in self.failures],
        }

    def rows_to_drop(self, always_fail: tuple[str, ...]) -> set[str] | None:
        """The rows whose removal could save the batch, or None when a failure cannot be fixed by dropping."""
        if any(f.level != "row" or f.rule in always_fail for f in self.failures):
            return None
        return {uri for f in self.failures for uri in f.uris}

    def rules_by_uri(self) -> dict[str, list[str]]:
        """Every rule each offending row failed (not just one of them), sorted."""
        rules: dict[str, set[str]] = {}
        for failure in self.failures:
            for uri in failure.uris:
                rules.setdefault(uri, set()).add(failure.rule)
        return {uri: sorted(names) for uri, names in rules.items()}


def batch_failure(rule: str, observed: str, fix: str = "") -> RuleFailure:
    """A failed batch-level ingest check: the whole batch is quarantined, no row is named."""
    check = INGEST_CHECKS[rule]
    return RuleFailure(rule=rule, level=check.level, expectation=INGEST_CHECK, why=check.why,
                       unexpected_count=0, observed=observed, fix=fix)  # fmt: skip


def check_failures(problems: pd.DataFrame) -> list[RuleFailure]:
    """Row-level ingest checks as rule failures; ``problems`` has one row per (``uri``, ``rule``, ``error``)."""
    failures = []
    for rule, rows in problems.groupby("rule", sort=True):
        check = INGEST_CHECKS[str(rule)]
        failures.append(RuleFailure(
            rule=check.rule, level=check.level, expectation=INGEST_CHECK, why=check.why,
            unexpected_count=len(rows), observed=None,
            sample_rows=[{"uri": u, "error": e} for u, e in rows[["uri", "error"]].head(SAMPLE_ROWS).itertuples(index=False)],
            uris=tuple(rows["uri"]), fix=check.fix,
        ))  # fmt: skip
    return failures


def load_suite_dict(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("ml.data.suites").joinpath(name).read_text())
    return data


def suite_parameters(settings: Settings, columns: list[str]) -> dict[str, Any]:
    """Values for the suites' ``$PARAMETER`` placeholders, taken from the configuration."""
    cfg = settings.ingest
    return {
        "columns": columns,
        "labels": list(settings.labels),
        "min_rows": cfg.min_rows,
        "max_rows": cfg.max_rows,
        "min_side": cfg.min_side,
        "max_side": cfg.max_side,
        "min_class_share": cfg.min_class_share,
        "max_class_share": cfg.max_class_share,
    }


def class_shares(manifest: pd.DataFrame, labels: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    counts = manifest["label"].value_counts()
    total = max(int(counts.sum()), 1)
    return pd.DataFrame(
        {"uri": [f"label:{label}" for label in labels], "error": "", "label": list(labels),
         "rows": [int(counts.get(label, 0)) for label in labels],
         "share": [int(counts.get(label, 0)) / total for label in labels]}
    )  # fmt: skip


def _run_suite(context: Any, suite_file: str, frame: pd.DataFrame, parameters: dict[str, Any]) -> Any:
    import great_expectations as gx

    suite_dict = load_suite_dict(suite_file)
    suite = gx.ExpectationSuite(**suite_dict)
    # A misspelled expectation type is dropped on load with only a log line: refuse to run short.
    if len(suite.expectations) != len(suite_dict["expectations"]):
        raise RuntimeError(
            f"GX suite {suite_file} lost expectations on load "
            f"({len(suite.expectations)} of {len(suite_dict['expectations'])}); check the types in ml/data/suites"
        )
    suite = context.suites.add(suite)
    name = suite_dict["name"]
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    return definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["uri", "error"]},
    )


def _listed(values: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _explained(rule: str, details: dict[str, Any], meta: dict[str, Any], settings: Settings) -> tuple[Any, str]:
    """``observed`` and ``fix`` of a failed GX rule: from the settings where the result alone does not say what
    to do, else the suite's own ``fix``."""
    observed = details.get("observed_value")
    if rule == "label_in_set":
        # GX's result names the offending values but observes nothing; the unknown labels are what to act on.
        unknown = sorted({str(value) for value in details.get("unexpected_list") or []})
        fix = (f"the label folder(s) {_listed(unknown)} are not among the configured labels "
               f"({_listed(list(settings.labels))}): add them to `labels` in ct.yaml, or rename those folders "
               "under images/ to a configured label")  # fmt: skip
        return unknown, fix
    if rule == "row_count":
        cfg = settings.ingest
        limits = f"ingest.min_rows={cfg.min_rows:,} and ingest.max_rows={cfg.max_rows:,}"
        rows = int(observed or 0)
        if rows < cfg.min_rows:
            where = "no file was found in the batch" if rows == 0 else f"the batch has {rows:,} files"
            todo = "add images to the batch (at images/<label>/<file>), or lower ingest.min_rows"
        else:
            where, todo = f"the batch has {rows:,} files", "split it into smaller batches, or raise ingest.max_rows"
        return observed, f"{where}; {limits} allow {cfg.min_rows:,} to {cfg.max_rows:,}: {todo}"
    return observed, str(meta.get("fix", ""))


def _failure(res: Any, settings: Settings) -> RuleFailure:
    config = res.expectation_config
    if config is None:
        raise RuntimeError("a GX result came back without its expectation configuration")
    meta = config.meta or {}
    details = res.result or {}
    indexed = [row for row in (details.get("unexpected_index_list") or []) if isinstance(row, dict)]
    samples = [{"uri": str(r.get("uri")), **({"error": str(r["error"])} if r.get("error") else {})} for r in indexed]
    rule = str(meta.get("rule", config.type))
    observed, fix = _explained(rule, details, meta, settings)
    return RuleFailure(
        rule=rule,
        level=str(meta.get("level", "batch")),
        expectation=config.type,
        why=str(meta.get("why", "")),
        unexpected_count=int(details.get("unexpected_count") or 0),
        observed=observed,
        sample_rows=samples[:SAMPLE_ROWS],
        uris=tuple(str(r.get("uri")) for r in indexed),
        fix=fix,
    )


def validate_manifest(
    manifest: pd.DataFrame, settings: Settings, problems: pd.DataFrame | None = None
) -> ValidationOutcome:
    """Run both suites on ``manifest`` and name each failed rule with the offending rows.

    ``problems``: the row-level ingest checks that failed, one row per (``uri``, ``rule``, ``error``);
    they join GX's failures, so that one outcome (and one report) holds every rule.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    parameters = suite_parameters(settings, list(manifest.columns))
    results = [
        _run_suite(context, "manifest.json", manifest, parameters),
        _run_suite(context, "class_balance.json", class_shares(manifest, settings.labels), parameters),
    ]
    checked = check_failures(problems) if problems is not None else []
    failures = sorted(
        [*(_failure(r, settings) for result in results for r in result.results if not r.success), *checked],
        key=lambda f: f.rule,
    )
    checks = ROW_CHECKS if problems is not None else ()
    return ValidationOutcome(
        success=all(bool(r.success) for r in results) and not checked,
        evaluated=sum(len(r.results) for r in results) + len(checks),
        failures=failures,
        gx_results=[json.loads(json.dumps(r.to_json_dict(), default=str)) for r in results],
        checks=checks,
    )


def _html_row(rule: str, level: str, success: bool, kind: str, count: Any, observed: Any, samples: list[Any],
              why: str, fix: str = "") -> str:  # fmt: skip
    return (
        "<tr class='{cls}'><td>{rule}</td><td>{level}</td><td>{ok}</td><td>{kind}</td><td>{count}</td>"
        "<td>{observed}</td><td>{samples}</td><td>{why}</td><td>{fix}</td></tr>".format(
            cls="ok" if success else "bad",
            rule=html.escape(rule),
            level=html.escape(level),
            ok="pass" if success else "FAIL",
            kind=html.escape(kind),
            count=html.escape(str(count)),
            observed=html.escape(str(observed)),
            samples=html.escape(", ".join(str(s) for s in samples[:5])),
            why=html.escape(why),
            fix=html.escape(fix),
        )
    )


def render_html(batch_id: str, outcome: ValidationOutcome, dropped: int = 0) -> str:
    """A self-contained HTML page of the validation result (our Data Docs equivalent)."""
    rows = []
    failed = {f.rule: f for f in outcome.failures}
    for result in outcome.gx_results:
        for res in result.get("results", []):
            config = res.get("expectation_config", {})
            meta = config.get("meta") or {}
            details = res.get("result") or {}
            failure = None if res.get("success") else failed.get(str(meta.get("rule", "")))
            rows.append(_html_row(
                str(meta.get("rule", "")), str(meta.get("level", "")), bool(res.get("success")),
                str(config.get("type", "")), details.get("unexpected_count", ""),
                # A failure's own observed is GX's, or what ct derived where GX observes nothing (label_in_set).
                details.get("observed_value", "") if failure is None or failure.observed is None else failure.observed,
                details.get("partial_unexpected_list") or [], str(meta.get("why", "")), failure.fix if failure else "",
            ))  # fmt: skip
    for rule in outcome.checks:
        check, failure = INGEST_CHECKS[rule], failed.get(rule)
        rows.append(_html_row(rule, check.level, failure is None, INGEST_CHECK, failure.unexpected_count if failure else 0,
                              "", [r["uri"] for r in failure.sample_rows] if failure else [], check.why,
                              failure.fix if failure else ""))  # fmt: skip
    verdict = "passed" if outcome.success else "FAILED"
    return (
        "<!doctype html><meta charset='utf-8'><title>ct validation: {b}</title>"
        "<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}"
        "table{{border-collapse:collapse}}tr.bad{{background:#fde2e2}}tr.ok{{background:#eefaee}}</style>"
        "<h1>Batch {b}: validation {v}</h1><p>{n} expectations evaluated; {d} rows dropped by ingest.on_bad_rows.</p>"
        "<table><tr><th>rule</th><th>level</th><th>result</th><th>expectation</th><th>unexpected</th>"
        "<th>observed</th><th>sample values</th><th>why</th><th>fix</th></tr>{rows}</table>"
    ).format(b=html.escape(batch_id), v=verdict, n=outcome.evaluated, d=dropped, rows="".join(rows))
