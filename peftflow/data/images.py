"""Image files of multimodal rows: paths relative to dataset_dir, read and checked as bytes.

The bytes travel in the prepared data (an Arrow binary column), so training and evaluation
never look at dataset_dir again and a prepared dataset stays valid when the files move.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from peftflow.data.formats import InvalidRow
from peftflow.data.sources import DatasetSource, read_rows


def read_images(source: DatasetSource, paths: list[str]) -> list[bytes]:
    """Each image's bytes, checked to decode; a missing or broken file makes the row invalid."""
    from PIL import Image, UnidentifiedImageError

    if paths and source.root is None:
        raise InvalidRow("images need a local dataset_dir", "cloud datasets carry no image files")
    images = []
    for rel in paths:
        path = source.root / rel
        if not path.is_file():
            raise InvalidRow("image file not found", f"{rel} in {source.root}")
        data = path.read_bytes()
        try:
            Image.open(io.BytesIO(data)).verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise InvalidRow("not a readable image", rel) from None
        images.append(data)
    return images


def images_digest(source: DatasetSource) -> bytes:
    """sha256 over every image the dataset names (path and content), for the data fingerprint."""
    column = source.format.columns.get("images")
    h = hashlib.sha256()
    if not column or source.root is None:
        return h.digest()
    for file in source.files:
        for row in read_rows(file, source.format.required_columns):
            value = row.get(column)
            for rel in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                path = source.root / rel if isinstance(rel, str) else None
                h.update(str(rel).encode() + b"\0")
                if path is not None and path.is_file():
                    h.update(Path(path).read_bytes())
    return h.digest()
