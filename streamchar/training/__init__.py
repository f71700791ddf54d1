"""What every StreamChar trainer shares besides the loop (:mod:`streamchar.training.loop`): the learning
rate schedule and the finite-loss check. Checkpoints and the run folder's guard are in
:mod:`streamchar.checkpoints`.
"""

from __future__ import annotations

import math

import torch


# -- schedule -----------------------------------------------------------------------------------
def cosine_lr(step: int, total: int, base: float, minimum: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay from ``base`` to ``minimum`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * progress))


def check_finite_loss(loss: torch.Tensor, step: int, section: str) -> None:
    """Stop with advice when the loss is NaN or infinite (``section``: e.g. ``train.teacher``)."""
    value = loss.item()
    if not math.isfinite(value):
        name = section.rsplit(".", 1)[-1]
        raise FloatingPointError(
            f"The {name} loss became {value} at step {step + 1}; resume from the last checkpoint with a lower "
            f"{section}.lr."
        )
