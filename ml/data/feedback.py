"""Late labels: a feedback batch says what served images really were, by the request id they were answered under.

A feedback batch lands like any batch (``python -m ml land`` or a producer's own upload):
``landing/<batch_id>/feedback.csv`` with a header ``request_id,label``, then ``_COMMITTED``. Ingest
checks it (:func:`check`) and writes ``feedback/<batch_id>.parquet`` (``request_id``, ``label``,
``batch_id``, ``landed_at``), or quarantines it with the rule it broke, keeping the file in landing:

* ``feedback_columns``: the CSV has ``request_id`` and ``label`` columns;
* ``feedback_rows``: it has at least one row, and no empty request id;
* ``feedback_labels``: every label is one of ``labels``;
* ``feedback_unique``: a request id has one label (a repeated row with the same label is fine).

The monitor joins it to the prediction log (:mod:`ml.monitor.live`): realized accuracy per model
version and day, and the label lag. A request id that matches no logged prediction is kept and
counted there, not refused here: the prediction may sit in an hour the monitor has not read.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from ml import layout
from ml.config import Settings
from ml.storage import Lake

log = logging.getLogger(__name__)

FILE = "feedback.csv"
COLUMNS = ("request_id", "label")


class FeedbackRejected(ValueError):
    """A feedback batch broke a rule: its name, why, and what to do."""

    def __init__(self, rule: str, why: str, fix: str) -> None:
        super().__init__(why)
        self.rule, self.why, self.fix = rule, why, fix


def is_feedback(lake: Lake, batch_id: str) -> bool:
    return lake.exists(layout.join(layout.landing(batch_id), FILE))


def feedback_batches(lake: Lake) -> list[str]:
    """Ids of the feedback batches ingest has accepted."""
    return sorted(name.removesuffix(".parquet") for name in lake.list_children(layout.FEEDBACK)
                  if name.endswith(".parquet"))  # fmt: skip


def check(raw: bytes, labels: tuple[str, ...]) -> Any:
    """The feedback rows of ``feedback.csv``, or :class:`FeedbackRejected` naming the rule it broke."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackRejected("feedback_columns", f"{FILE} is not a readable CSV: {exc}",
                               f"write {FILE} as UTF-8 CSV with the header request_id,label") from exc  # fmt: skip
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise FeedbackRejected("feedback_columns", f"{FILE} lacks the column(s) {', '.join(missing)} "
                               f"(it has {', '.join(frame.columns) or 'none'})",
                               "the header must name request_id and label")  # fmt: skip
    frame = frame[list(COLUMNS)].apply(lambda column: column.str.strip())
    if frame.empty or (frame["request_id"] == "").any():
        empty = int((frame["request_id"] == "").sum())
        raise FeedbackRejected("feedback_rows", f"{FILE} has {len(frame)} rows, {empty} without a request id",
                               "send one row per answered image: the request_id the service returned, "
                               "and its true label")  # fmt: skip
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise FeedbackRejected("feedback_labels", f"labels {unknown[:10]} are not among labels {list(labels)}",
                               "fix the labels, or add the new class to labels in ct.yaml first")  # fmt: skip
    frame = frame.drop_duplicates()
    repeated = frame["request_id"][frame["request_id"].duplicated()].unique().tolist()
    if repeated:
        raise FeedbackRejected("feedback_unique", f"request ids with two different labels: {repeated[:10]}",
                               "keep one label per request id")  # fmt: skip
    return frame.reset_index(drop=True)


def ingest(lake: Lake, batch_id: str, settings: Settings) -> dict[str, Any]:
    """Accept a feedback batch into ``feedback/<batch_id>.parquet`` (once); :class:`FeedbackRejected` if it breaks a rule."""
    key = layout.feedback(batch_id)
    if lake.exists(key):
        return {"batch_id": batch_id, "status": "feedback", "already_done": True, "feedback_uri": lake.uri(key)}
    frame = check(lake.read_bytes(layout.join(layout.landing(batch_id), FILE)), settings.labels)
    frame = frame.assign(batch_id=batch_id, landed_at=time.time())
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    lake.write_bytes(key, buffer.getvalue())  # the commit point: written whole, or not at all
    log.info("feedback batch %s: %d late labels", batch_id, len(frame))
    return {"batch_id": batch_id, "status": "feedback", "rows": len(frame), "already_done": False,
            "feedback_uri": lake.uri(key)}  # fmt: skip


def read_all(lake: Lake) -> Any:
    """Every accepted late label, one row per request id (a later batch's label wins)."""
    import pandas as pd

    frames = [pd.read_parquet(io.BytesIO(lake.read_bytes(layout.feedback(b)))) for b in feedback_batches(lake)]
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "batch_id", "landed_at"])
    frame = pd.concat(frames, ignore_index=True).sort_values("landed_at", kind="stable")
    return frame.drop_duplicates("request_id", keep="last").reset_index(drop=True)
