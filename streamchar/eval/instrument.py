"""What every trained evaluation instrument shares: a resumable training loop, and a folder format.

An instrument folder (``checkpoints/eval/NAME/``) holds ``model.safetensors``, ``config.json`` (the class,
its constructor arguments and the scores it earned on ground truth) and a ``README.md`` model card.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from streamchar.training import list_checkpoints, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class InstrumentError(FileNotFoundError):
    """A missing or unusable instrument folder; the message says what to do."""


def autocast():
    """The instruments run on the CPU under bf16 autocast, on every machine, so that a checkpoint scores
    the same whether or not a GPU is present."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], tuple[torch.Tensor, dict]],
    steps: int,
    run_dir: str | Path | None,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    warmup: int = 50,
    checkpoint_every: int = 200,
    seed: int = 0,
    desc: str = "train",
) -> nn.Module:
    """AdamW with warm-up and cosine decay for ``steps`` steps of ``loss_fn(generator)``.

    With a ``run_dir``, a checkpoint is written every ``checkpoint_every`` steps and training resumes from
    the newest one (same batches, same result as an uninterrupted run).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    start = 0
    if run_dir is not None and list_checkpoints(run_dir):
        last = list_checkpoints(run_dir)[-1]
        start = load_checkpoint(last, model, opt)["step"]
        logger.info("resuming %s from step %d (%s)", desc, start, last)
    model.train()
    generator = torch.Generator()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step")
    for step in bar:
        generator.manual_seed(seed * 1_000_003 + step)  # batches depend on the step only: exact resume
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step)
        with autocast():
            loss, logs = loss_fn(generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        bar.set_postfix({"loss": f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in logs.items()}})
        done = step + 1
        if run_dir is not None and (done % checkpoint_every == 0 or done == steps):
            save_checkpoint(run_dir, done, model, opt, keep=1)
    model.eval()
    return model.requires_grad_(False)


def save_instrument(model: nn.Module, folder: str | Path, config: dict, scores: dict, card: str) -> Path:
    """Write ``model.safetensors`` (float32), ``config.json`` and ``README.md``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"config": config, "scores": scores}, indent=1) + "\n")
    (folder / "README.md").write_text(card)
    return folder


def read_instrument(folder: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(constructor config, weights, scores)`` of an instrument folder."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise InstrumentError(
                f"{folder / name} not found; train the {what} with `streamchar eval train {folder.name}` "
                "or pass the folder that holds it."
            )
    try:
        meta = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as err:
        raise InstrumentError(
            f"{folder} is corrupt ({err}); retrain it with `streamchar eval train`."
        ) from err
    return meta["config"], weights, meta.get("scores", {})


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], folder: str | Path) -> nn.Module:
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise InstrumentError(
            f"{folder} does not fit this StreamChar's instrument ({str(err).splitlines()[0]}); retrain it."
        ) from err
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def inference():
    with torch.no_grad(), autocast():
        yield
