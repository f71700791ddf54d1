"""Loading trained model folders: one place, below the engine and the trainers that both need them.

A prior folder (``streamchar train prior`` exports ``RUN/final``; the model folder ships it as ``prior-audio/``
and ``prior-video/``) holds ``model.safetensors`` and ``prior.json``: its kind (``audio`` | ``video``) and the
constructor arguments it was built with, so it loads whatever the current config says.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from streamchar.config import resolve_asset_path
from streamchar.denoiser.prior import AcousticPrior, VideoPrior

PRIOR_RECORD = "prior.json"
PRIOR_CLASSES = {"audio": AcousticPrior, "video": VideoPrior}


class LoadError(ValueError):
    """A model folder that cannot be loaded; the message says what to do."""


def save_prior(
    model: torch.nn.Module, kind: str, kwargs: dict, folder: str | Path, extra: dict | None = None
) -> Path:
    """Write a prior folder: ``model.safetensors`` (float32) and ``prior.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    record = {"kind": kind, "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
              **(extra or {})}  # fmt: skip
    (folder / PRIOR_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return folder


def prior_folder(path: str | Path) -> Path:
    """A prior folder, or a training run's export (``RUN/final``)."""
    folder = resolve_asset_path(path)
    if not (folder / PRIOR_RECORD).is_file() and (folder / "final" / PRIOR_RECORD).is_file():
        folder = folder / "final"
    return folder


def load_prior(path: str | Path, kind: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The ``audio`` (:class:`AcousticPrior`) or ``video`` (:class:`VideoPrior`) prior in ``path``, in eval mode."""
    from safetensors.torch import load_file

    folder = prior_folder(path)
    record_path = folder / PRIOR_RECORD
    if not record_path.is_file():
        raise LoadError(
            f"No trained {kind} prior in {folder}; train one with `streamchar train prior --which {kind}` or set "
            f"prior.{kind}_path."
        )
    try:
        record = json.loads(record_path.read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as err:
        raise LoadError(
            f"The prior in {folder} is damaged ({err}); retrain it or restore the folder."
        ) from err
    if record.get("kind") != kind:
        raise LoadError(
            f"{folder} holds a {record.get('kind')} prior, not a {kind} prior; check prior.{kind}_path."
        )
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in record["arch"].items()}
    model = PRIOR_CLASSES[kind](**arch)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise LoadError(
            f"The weights in {folder} do not fit the {kind} prior its {PRIOR_RECORD} describes ({len(missing)} "
            f"missing, {len(unexpected)} unexpected tensors); retrain it or restore the folder."
        )
    return model.to(device).eval().requires_grad_(False)


def load_priors(cfg, device: torch.device | str = "cpu"):
    """Both frozen priors (:class:`~streamchar.denoiser.prior.Priors`) at ``prior.audio_path`` / ``prior.video_path``."""
    from streamchar.denoiser.prior import Priors

    if not cfg.prior.audio_path or not cfg.prior.video_path:
        raise LoadError(
            "A residual denoiser refines the priors' means; set prior.audio_path and prior.video_path."
        )
    return Priors(load_prior(cfg.prior.audio_path, "audio"), load_prior(cfg.prior.video_path, "video")).to(
        device
    )
