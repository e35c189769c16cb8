"""A read-only view of ct's reports in the lake, mounted in the Airflow API server under ``/ct``.

Only ``reports/``, ``quarantine/`` and ``curated/*/manifest`` keys are served, and only to users
logged in to Airflow (the same session cookie as the UI).
"""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response

SERVED_PREFIXES = ("reports/", "quarantine/", "state/decisions/")


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import get_user

    app = FastAPI(title="ct reports", dependencies=[Depends(get_user)])

    @app.get("/lake/{key:path}")
    def read_lake_object(key: str) -> Response:
        from ml.config import load_settings
        from ml.errors import CtError
        from ml.storage import Lake, clean_key

        try:
            key = clean_key(key)
        except CtError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if not key.startswith(SERVED_PREFIXES):
            raise HTTPException(status_code=404, detail=f"only {', '.join(SERVED_PREFIXES)} are served")
        lake = Lake.from_uri(load_settings().lake_uri)
        if not lake.exists(key):
            raise HTTPException(status_code=404, detail=f"{lake.uri(key)} does not exist")
        body = lake.read_bytes(key)
        media_type = mimetypes.guess_type(key)[0] or "text/plain"
        if key.endswith(".md"):
            media_type = "text/plain; charset=utf-8"
        return Response(content=body, media_type=media_type)

    @app.get("/decisions")
    def list_decisions(response: Response, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first. An unreadable record is skipped and named in ``X-Ct-Unreadable`` (and the log)."""
        from ml.config import load_settings
        from ml.promote import read_history
        from ml.storage import Lake

        records, problems = read_history(Lake.from_uri(load_settings().lake_uri), limit)
        if problems:
            response.headers["X-Ct-Unreadable"] = str(len(problems))
            response.headers["X-Ct-Unreadable-First"] = problems[0][:500].encode("ascii", "replace").decode()
        return list(reversed(records))

    return app
