"""What every trained evaluation instrument shares: a resumable training loop, and a folder format.

An instrument folder (``checkpoints/eval/NAME/``) holds ``model.safetensors``, ``config.json`` (the class,
its constructor arguments and the scores it earned on ground truth) and a ``README.md`` model card; it is
read back by :func:`streamchar.loaders.load_instrument`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from streamchar.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from streamchar.precision import instrument_autocast

logger = logging.getLogger(__name__)


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
        with instrument_autocast():
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
