"""Where the chart is and how the chart tests render it; the helm binary itself comes from :mod:`tests.tools`."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ct"
RELEASE = "ct"
NAMESPACE = "airflow"
KUBE_VERSION = "1.30.0"
