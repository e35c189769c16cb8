from __future__ import annotations

import json

import pytest

from ml.cli import main


@pytest.fixture
def run_step(ct_home, capsys):  # type: ignore[no-untyped-def]
    """Run ``python -m ml <argv>`` in-process and return its JSON result (exit 1 exactly when it is an error)."""

    def _run(*argv: str) -> dict:
        code = main(list(argv))
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == (1 if "error" in result else 0), result
        return result

    return _run
