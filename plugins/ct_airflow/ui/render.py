"""The Jinja environment of the dashboard: autoescaped templates, numbers and times for people."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).with_name("templates")


def num(value: Any, digits: int = 3) -> str:
    """A number rounded for reading: ``0.9333`` -> ``0.933``; tiny values in scientific notation."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 10**-digits:
            return f"{value:.1e}"
        text = f"{value:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def points(value: Any) -> str:
    """An accuracy difference in percentage points, signed: ``0.0133`` -> ``+1.33 pts``."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value * 100:+.2f} pts"


def pvalue(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def when(value: Any) -> str:
    """A Unix time or an ISO string as ``2026-01-03 04:00 UTC``."""
    if value in (None, ""):
        return "-"
    try:
        moment = (
            datetime.fromtimestamp(float(value), UTC)
            if isinstance(value, int | float)
            else datetime.fromisoformat(str(value))
        )
    except (TypeError, ValueError):
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, points=points, pvalue=pvalue, when=when, pretty_json=pretty_json)
    return env


def page(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def trusted(svg: str) -> Markup:
    """Mark markup built by :mod:`.charts` (which escapes every text it puts in) as safe to embed."""
    return Markup(svg)
