from __future__ import annotations

import json

import pytest

from ml.cli import main


@pytest.fixture
def run_step(ct_home, capsys):  # type: ignore[no-untyped-def]
    """Run ``python -m ml <argv>`` in-process and return its JSON result, checking that the exit code
    matches it: 0 for a result or a skip, 75 for a retryable error, 2 for refused arguments, else 1."""

    def _run(*argv: str) -> dict:
        code = main(list(argv))
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        expected = 0
        if "error" in result:
            expected = 75 if result["retryable"] else 2 if result["error_type"] in ("UsageError", "ConfigError") else 1
        assert code == expected, (code, result)
        return result

    return _run
