"""Two-stage distillation (DESIGN.md section 9): losses apart from the trainers that use them."""

from __future__ import annotations

import json
from pathlib import Path

DISTILLED = "distilled.json"  # written beside a student's weights: its steps, shift and folded guidance


def read_distilled(path: str | Path) -> dict | None:
    """A student checkpoint's ``distilled.json`` (None for a teacher); ``path`` is the checkpoint folder
    or the distillation run that exported it."""
    from streamchar.config import resolve_asset_path

    path = resolve_asset_path(path)
    for folder in (path, path / "student"):
        if (folder / DISTILLED).is_file():
            return json.loads((folder / DISTILLED).read_text())
    return None
