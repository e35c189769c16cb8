"""Turn labelled production images into a training batch: served images (kept by ``serve.keep_images``)
with their late labels become ``landing/<batch_id>/images/<label>/<sha256>.<ext>``, committed.

It only lands them; ingest then treats them as any batch (its rules, quarantine, duplicates of
images already curated), so a production image can never reach training unchecked. Idempotent: a
batch already committed is not landed again.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from ml import layout
from ml.data import feedback
from ml.errors import UsageError
from ml.serve import predlog
from ml.storage import Lake

log = logging.getLogger(__name__)

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


def _extension(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return EXTENSIONS.get(str(image.format), "png")
    except (UnidentifiedImageError, OSError):
        return "bin"  # lands anyway: ingest refuses it by its rules, with the reason


def harvest(lake: Lake, feedback_ids: list[str], batch_id: str, since: float = 0.0) -> dict[str, Any]:
    """Land the kept images of the predictions that ``feedback_ids`` label, under their true labels."""
    if lake.exists(layout.commit_marker(batch_id)):
        return {"batch_id": batch_id, "already_done": True}
    labels = feedback.read_all(lake)
    labels = labels[labels["batch_id"].isin(feedback_ids)]
    if labels.empty:
        raise UsageError(f"no accepted feedback batch among {feedback_ids}; ingest them first")
    served = predlog.read(lake, since, float(labels["landed_at"].max()) + 1)
    joined = served.merge(labels[["request_id", "label"]].rename(columns={"label": "truth"}), on="request_id")
    landed: dict[str, int] = {}
    missing = 0
    for sha256, truth in joined.drop_duplicates("sha256")[["sha256", "truth"]].itertuples(index=False):
        key = layout.served_image(str(sha256))
        if not lake.exists(key):
            missing += 1  # served while serve.keep_images was off
            continue
        data = lake.read_bytes(key)
        name = f"{sha256}.{_extension(data)}"
        lake.write_bytes(layout.join(layout.landing(batch_id), "images", str(truth), name), data)
        landed[str(truth)] = landed.get(str(truth), 0) + 1
    if not landed:
        raise UsageError(f"none of the {len(joined)} labelled predictions has its image kept; set "
                         "serve.keep_images=true on the service to keep them")  # fmt: skip
    lake.write_bytes(layout.commit_marker(batch_id), json.dumps({"harvested_from": feedback_ids}).encode())
    log.info("harvested %d labelled production images into %s (%d without a kept image)", sum(landed.values()),
             batch_id, missing)  # fmt: skip
    return {"batch_id": batch_id, "images": sum(landed.values()), "per_label": landed, "without_image": missing,
            "already_done": False}  # fmt: skip
