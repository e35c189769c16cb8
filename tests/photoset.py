"""A folder of "someone's own photos", made with NumPy: what a newcomer points ``python -m ml land`` at.

``<root>/<label>/<file>``, with what real photo folders hold: RGB pictures of mixed sizes and aspect
ratios, JPEG and PNG, some saved grey, some stored sideways with an EXIF orientation (as phones do),
one truncated file and one folder nested below its label. The pictures are
:mod:`ml.data.synthetic`'s shapes, which a CNN can learn, stretched to each file's size.

``python -m tests.photoset <folder> [per_class]`` writes one (for trying the README by hand).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data.synthetic import images

LABELS = ("bird", "cat", "dog", "fish", "horse")
ORIENTATION = 0x0112


@dataclass
class PhotoSet:
    root: Path
    files: int = 0
    rotated: list[str] = field(default_factory=list)  # relative paths stored sideways, EXIF orientation 6
    grey: list[str] = field(default_factory=list)
    corrupt: str = ""
    misplaced: str = ""


def encode(picture: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    picture.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write(root: Path, per_class: int = 60, labels: tuple[str, ...] = LABELS, seed: int = 0) -> PhotoSet:
    rng = np.random.default_rng(seed)
    pixels, classes = images(per_class * len(labels), 96, classes=len(labels), seed=seed)
    made = PhotoSet(root)
    for i, (square, label) in enumerate(zip(pixels, classes, strict=True)):
        width, height = (int(v) for v in rng.integers(60, 220, 2))
        picture = Image.fromarray(square).resize((width, height), Image.Resampling.BILINEAR)
        fmt, suffix = ("JPEG", "jpg") if i % 5 < 3 else ("PNG", "png")
        relpath = f"{labels[label]}/IMG_{i:04d}.{suffix}"
        if i % 10 == 4:
            picture = picture.convert("L")
            made.grey.append(relpath)
        if i % 17 == 3:  # the sensor's rows: turned a quarter, with the tag that turns it back
            data = encode(picture.transpose(Image.Transpose.ROTATE_90), fmt, orientation=6)
            made.rotated.append(relpath)
        else:
            data = encode(picture, fmt)
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
        made.files += 1
    made.corrupt = f"{labels[0]}/IMG_broken.jpg"
    (root / made.corrupt).write_bytes(encode(Image.new("RGB", (80, 60), (90, 120, 30)), "JPEG")[:300])
    made.misplaced = f"{labels[1]}/2019/IMG_old.jpg"
    (root / made.misplaced).parent.mkdir(parents=True)
    (root / made.misplaced).write_bytes(encode(Image.fromarray(pixels[0]), "JPEG"))
    made.files += 2
    return made


if __name__ == "__main__":
    target = Path(sys.argv[1])
    made = write(target, int(sys.argv[2]) if len(sys.argv) > 2 else 60)
    print(f"{made.files} files under {target}: {len(made.rotated)} EXIF-rotated, {len(made.grey)} grey, "
          f"{made.corrupt} truncated, {made.misplaced} misplaced")  # fmt: skip
