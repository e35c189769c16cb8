"""Validate a batch with the Great Expectations suites kept in ``ml/suites/``.

Two suites run on one ephemeral GX context: ``manifest.json`` on the manifest (one row per file) and
``class_balance.json`` on the batch's label shares. Each expectation's ``meta`` names the rule, says
why it exists and whether it is a ``row`` rule (offending rows are listed and may be dropped) or a
``batch`` rule (the whole batch fails).
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

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "level": self.level,
            "expectation": self.expectation,
            "why": self.why,
            "unexpected_count": self.unexpected_count,
            "observed": self.observed,
            "sample_rows": self.sample_rows,
        }


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    evaluated: int
    failures: list[RuleFailure]
    gx_results: list[dict[str, Any]]

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


def load_suite_dict(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("ml.suites").joinpath(name).read_text())
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
            f"({len(suite.expectations)} of {len(suite_dict['expectations'])}); check the types in ml/suites"
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


def _failure(res: Any) -> RuleFailure:
    config = res.expectation_config
    if config is None:
        raise RuntimeError("a GX result came back without its expectation configuration")
    meta = config.meta or {}
    details = res.result or {}
    indexed = [row for row in (details.get("unexpected_index_list") or []) if isinstance(row, dict)]
    samples = [{"uri": str(r.get("uri")), **({"error": str(r["error"])} if r.get("error") else {})} for r in indexed]
    return RuleFailure(
        rule=str(meta.get("rule", config.type)),
        level=str(meta.get("level", "batch")),
        expectation=config.type,
        why=str(meta.get("why", "")),
        unexpected_count=int(details.get("unexpected_count") or 0),
        observed=details.get("observed_value"),
        sample_rows=samples[:SAMPLE_ROWS],
        uris=tuple(str(r.get("uri")) for r in indexed),
    )


def validate_manifest(manifest: pd.DataFrame, settings: Settings) -> ValidationOutcome:
    """Run both suites on ``manifest`` and name each failed rule with the offending rows."""
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
    failures = sorted(
        (_failure(r) for result in results for r in result.results if not r.success), key=lambda f: f.rule
    )
    return ValidationOutcome(
        success=all(bool(r.success) for r in results),
        evaluated=sum(len(r.results) for r in results),
        failures=failures,
        gx_results=[json.loads(json.dumps(r.to_json_dict(), default=str)) for r in results],
    )


def render_html(batch_id: str, outcome: ValidationOutcome, dropped: int = 0) -> str:
    """A self-contained HTML page of the validation result (our Data Docs equivalent)."""
    rows = []
    for result in outcome.gx_results:
        for res in result.get("results", []):
            config = res.get("expectation_config", {})
            meta = config.get("meta") or {}
            details = res.get("result") or {}
            samples = details.get("partial_unexpected_list") or []
            rows.append(
                "<tr class='{cls}'><td>{rule}</td><td>{level}</td><td>{ok}</td><td>{kind}</td><td>{count}</td>"
                "<td>{observed}</td><td>{samples}</td><td>{why}</td></tr>".format(
                    cls="ok" if res.get("success") else "bad",
                    rule=html.escape(str(meta.get("rule", ""))),
                    level=html.escape(str(meta.get("level", ""))),
                    ok="pass" if res.get("success") else "FAIL",
                    kind=html.escape(str(config.get("type", ""))),
                    count=html.escape(str(details.get("unexpected_count", ""))),
                    observed=html.escape(str(details.get("observed_value", ""))),
                    samples=html.escape(", ".join(str(s) for s in samples[:5])),
                    why=html.escape(str(meta.get("why", ""))),
                )
            )
    verdict = "passed" if outcome.success else "FAILED"
    return (
        "<!doctype html><meta charset='utf-8'><title>ct validation: {b}</title>"
        "<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}"
        "table{{border-collapse:collapse}}tr.bad{{background:#fde2e2}}tr.ok{{background:#eefaee}}</style>"
        "<h1>Batch {b}: validation {v}</h1><p>{n} expectations evaluated; {d} rows dropped by ingest.on_bad_rows.</p>"
        "<table><tr><th>rule</th><th>level</th><th>result</th><th>expectation</th><th>unexpected</th>"
        "<th>observed</th><th>sample values</th><th>why</th></tr>{rows}</table>"
    ).format(b=html.escape(batch_id), v=verdict, n=outcome.evaluated, d=dropped, rows="".join(rows))
