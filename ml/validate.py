"""Validate a batch manifest with the Great Expectations suite kept in ``ml/suites/``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from ml.config import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SUITE_FILE = "manifest.json"
SAMPLE_ROWS = 20


@dataclass(frozen=True)
class RuleFailure:
    rule: str
    expectation: str
    why: str
    unexpected_count: int
    observed: Any = None
    sample_rows: list[dict[str, str]] = field(default_factory=list)  # uri, and the decoder's error if any


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    evaluated: int
    failures: list[RuleFailure]
    gx_result: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "expectations_evaluated": self.evaluated,
            "failures": [asdict(f) for f in self.failures],
        }


def load_suite_dict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("ml.suites").joinpath(SUITE_FILE).read_text())
    return data


def suite_parameters(settings: Settings, columns: list[str]) -> dict[str, Any]:
    """Values for the suite's ``$PARAMETER`` placeholders, taken from the configuration."""
    return {
        "columns": columns,
        "labels": list(settings.labels),
        "min_rows": settings.ingest.min_rows,
        "max_rows": settings.ingest.max_rows,
        "min_side": settings.ingest.min_side,
        "max_side": settings.ingest.max_side,
    }


def validate_manifest(manifest: pd.DataFrame, settings: Settings) -> ValidationOutcome:
    """Run the suite on ``manifest`` and name each failed rule with the offending rows' paths."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    suite_dict = load_suite_dict()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = gx.ExpectationSuite(**suite_dict)
    # A misspelled expectation type is dropped on load with only a log line: refuse to run short.
    if len(suite.expectations) != len(suite_dict["expectations"]):
        raise RuntimeError(
            f"GX suite {suite_dict['name']} lost expectations on load "
            f"({len(suite.expectations)} of {len(suite_dict['expectations'])}); check the types in ml/suites"
        )
    suite = context.suites.add(suite)
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("manifest")
    )
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": manifest},
        expectation_parameters=suite_parameters(settings, list(manifest.columns)),
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["uri", "error"]},
    )
    failures = []
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        if config is None:
            raise RuntimeError("a GX result came back without its expectation configuration")
        meta = config.meta or {}
        details = res.result or {}
        rows = [
            {"uri": str(row.get("uri")), **({"error": str(row["error"])} if row.get("error") else {})}
            for row in (details.get("unexpected_index_list") or [])
            if isinstance(row, dict)
        ]
        failures.append(
            RuleFailure(
                rule=str(meta.get("rule", config.type)),
                expectation=config.type,
                why=str(meta.get("why", "")),
                unexpected_count=int(details.get("unexpected_count") or 0),
                observed=details.get("observed_value"),
                sample_rows=rows[:SAMPLE_ROWS],
            )
        )
    failures.sort(key=lambda f: f.rule)
    return ValidationOutcome(
        success=bool(result.success),
        evaluated=len(result.results),
        failures=failures,
        gx_result=json.loads(json.dumps(result.to_json_dict(), default=str)),
    )
