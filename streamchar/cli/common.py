"""What every handler shares: its config (with its flags as overrides), JSON output, text input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def setting(key: str, value) -> str:
    """A flag's value as a ``key=value`` override (strings quoted, so that they stay strings)."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={json.dumps(value) if isinstance(value, str) else value}"


def load(args: argparse.Namespace, *flags: str):
    """The command's config: ``--config`` (or ``--model``'s preset and parts), the trailing overrides, then
    ``flags`` (the overrides the command's own flags make, which win)."""
    from streamchar.config import load_config, model_overrides

    if getattr(args, "model_name", None):
        preset, parts = model_overrides(args.model_name)
        return load_config(args.config or preset, parts + list(args.overrides) + list(flags))
    return load_config(args.config or "tiny", list(args.overrides) + list(flags))


def video_codec(args: argparse.Namespace) -> list[str]:
    """The override of ``--video-codec`` (a trained video codec folder)."""
    return [setting("video_codec.path", args.video_codec)] if args.video_codec else []


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=indent) + "\n")


def read_text(path: str) -> str:
    """A UTF-8 text file, or stdin for ``-``."""
    if path == "-":
        return sys.stdin.read()
    if not Path(path).is_file():
        raise CLIError(f"{path} does not exist; pass a UTF-8 text file.")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CLIError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8.") from err
