"""What every published-model loader shares: checks that the files are on disk (with errors that say what
to pass), optional packages, TorchScript archives, and the wrappers' device placement and input checks."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

WeightsPath = str | Path


class ExternalWeightsError(FileNotFoundError):
    """A file of an external evaluation model is not where the user said it would be."""


def require_package(module: str, purpose: str, pip_hint: str) -> ModuleType:
    """Import an optional package, or say in one sentence how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{purpose} needs the optional package {module}, which is not installed; {pip_hint}."
        ) from err


def weights_file(path: WeightsPath, published_name: str, what: str, hint: str) -> Path:
    """The weights file at ``path`` (or ``published_name`` inside it, when ``path`` is a directory)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / published_name
    if not file.is_file():
        raise ExternalWeightsError(f"{what} not found: {file}; {hint}.")
    return file


def checkpoint_dir(
    path: WeightsPath, what: str, requirements: Sequence[Sequence[Sequence[str]]], hint: str
) -> Path:
    """Check a checkpoint directory file by file.

    ``requirements`` holds, for each thing the checkpoint needs, the alternative sets of files that
    provide it (e.g. ``tokenizer.json`` or ``vocab.json`` with ``merges.txt``). When no set is complete,
    the error names the first missing file of the set that is nearest to complete.
    """
    folder = Path(path).expanduser()
    for alternatives in requirements:
        if any(all((folder / name).is_file() for name in names) for names in alternatives):
            continue
        nearest = max(alternatives, key=lambda names: sum((folder / name).is_file() for name in names))
        missing = next(folder / name for name in nearest if not (folder / name).is_file())
        raise ExternalWeightsError(f"{what} file not found: {missing}; {hint}.")
    return folder


HF_WEIGHTS = (
    ("model.safetensors",),
    ("model.safetensors.index.json",),
    ("pytorch_model.bin",),
    ("pytorch_model.bin.index.json",),
)


class PublishedModel:
    """A published network in eval mode on ``device``, in the wrapper that feeds it as its authors do."""

    def __init__(self, model: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()


def load_torchscript(file: Path, what: str, hint: str, device: torch.device) -> torch.jit.ScriptModule:
    try:
        model = torch.jit.load(str(file), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{file} is not a TorchScript archive, so it cannot be the {what}; {hint}.") from err
    return model.eval()


def uint8_tensor(array: np.ndarray | torch.Tensor, layout: str, ndim: int, name: str) -> torch.Tensor:
    """``array`` as a uint8 tensor of ``ndim`` dimensions whose last is 3 (RGB), or a clear error."""
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim or tensor.shape[-1] != 3:
        raise ValueError(
            f"{name} must be uint8 RGB {layout}, got shape {tuple(tensor.shape)} and dtype {tensor.dtype}."
        )
    return tensor


def audio_array(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    waveform = np.asarray(audio.cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"audio must be mono float32 [samples], got shape {waveform.shape}.")
    return waveform


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float ``[N, C, H, W]`` to ``size`` x ``size`` (a no-op when already there)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
