"""What every trained evaluation instrument shares: its training (on the one resumable loop), and a folder format.

An instrument folder (``checkpoints/eval/NAME/``) holds ``model.safetensors``, ``config.json`` (the class,
its constructor arguments and the scores it earned on ground truth) and a ``README.md`` model card; it is
read back by :func:`streamchar.loaders.load_instrument`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch import nn

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
    """AdamW with warm-up and cosine decay for ``steps`` steps of ``loss_fn(generator)``, on the one training
    loop (:mod:`streamchar.training.loop`).

    With a ``run_dir``, a checkpoint is written every ``checkpoint_every`` steps and training resumes from
    the newest one (same batches, same result as an uninterrupted run); without one the run folder is temporary.
    """
    from streamchar.training.loop import LoopSpec, TrainingRun, run_loop

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    settings = SimpleNamespace(steps=steps, lr=lr, lr_min=0.0, warmup_steps=warmup, grad_clip=5.0, ema_decay=0.0,
                               mixed_precision="no", log_every=checkpoint_every, eval_every=checkpoint_every,
                               ckpt_every=checkpoint_every, seed=seed, num_threads=0)  # fmt: skip
    with contextlib.ExitStack() as stack:
        out = (
            Path(run_dir) if run_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        out.mkdir(parents=True, exist_ok=True)
        record = {"instrument": desc, "class": type(model).__name__}
        run = TrainingRun(
            LoopSpec(desc, None, settings, out, record, record_name="instrument", desc=desc, curve=False)
        )
        run.setup({"model": model}, {"model": {"lr": lr, "weight_decay": weight_decay}})
        if run.start:
            logger.info("resuming %s from step %d (%s)", desc, run.start, out)

        def train_step(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
            with (
                instrument_autocast()
            ):  # batches depend on the step only (the loop's generator): exact resume
                loss, logs = loss_fn(generator)
            run.backward(loss)
            run.update("model", lr * schedule(step))
            return loss, logs

        run_loop(run, train_step)
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
