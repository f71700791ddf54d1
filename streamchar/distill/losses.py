"""The distillation losses, as pure functions of tensors (no model, no trainer, no data).

Every function works on any latent shape ``[B, ...]`` and returns a loss per item ``[B]``, so a
trainer can weight, mask and average them, and a data-parallel run that averages per-process means
of equal batches gets the mean of one process with the whole batch. ``mask`` (optional) is a 0/1
tensor broadcastable to the latents that marks the entries that count (e.g. the valid audio tokens
``[B, L_a, 1]``); means are over the counted entries.

Flow convention (``streamchar.denoiser.flow``): ``x_t = (1 - t) x_0 + t noise``, velocity
``noise - x_0``, so ``x_0 = x_t - t v``.

- :func:`ode_regression_loss`: the student's clean prediction against the teacher's ODE solution from
  the same noise (stage 1's initialisation).
- :func:`dmd_gradient` / :func:`dmd_loss`: distribution matching distillation. For a student sample
  ``x`` re-noised to ``x_t``, the real score (the frozen teacher with classifier-free guidance) and
  the fake score (a model trained online on the student's samples) each predict a clean sample; the
  reverse-KL gradient at ``x`` is proportional to ``fake_x0 - real_x0`` (the difference of the two
  scores, since ``score(x_t) = -(x_t - (1 - t) x0_hat) / t^2``). It is normalised per item by the
  mean absolute distance between ``x`` and the real prediction, which makes its size independent of
  the timestep and of the latent's scale.
- :func:`flow_matching_loss`: the fake score's own objective on the (detached) student samples.
- :func:`frame_phoneme_loss`: cross-entropy of each audio token's phoneme under a frozen frame classifier's
  logits of the student's speech (stage 2's ``distill.phoneme_weight``: what DMD alone does not ask for).
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over every dimension but the first, over the entries where ``mask`` is 1: ``[B]``."""
    values = values.float()
    if mask is None:
        return values.flatten(1).mean(1)
    weights = torch.broadcast_to(mask.to(values.dtype), values.shape)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1.0)


def ode_regression_loss(
    student_x0: torch.Tensor, teacher_x0: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of the student's clean prediction to the teacher's ODE solution: ``[B]``."""
    return masked_mean((student_x0.float() - teacher_x0.float()).pow(2), mask)


@torch.no_grad()
def dmd_gradient(
    x0: torch.Tensor,
    real_x0: torch.Tensor,
    fake_x0: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The normalised distribution-matching gradient at the student's sample ``x0`` (no graph).

    ``(fake_x0 - real_x0) / w`` with ``w`` = the mean of ``|x0 - real_x0|`` over the item's counted
    entries; masked-out entries get 0. Descending it moves ``x0`` towards the teacher's distribution
    and away from the student's own.
    """
    x0, real_x0, fake_x0 = x0.float(), real_x0.float(), fake_x0.float()
    weight = masked_mean((x0 - real_x0).abs(), mask).clamp_min(eps)
    grad = (fake_x0 - real_x0) / weight.reshape(-1, *([1] * (x0.dim() - 1)))
    if mask is not None:
        grad = grad * torch.broadcast_to(mask.to(grad.dtype), grad.shape)
    return torch.nan_to_num(grad)


def dmd_loss(
    x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A surrogate whose gradient with respect to ``x0`` is :func:`dmd_gradient` divided by the number of
    counted entries: ``0.5 * mean((x0 - stopgrad(x0 - g))^2)`` per item, ``[B]``. Only ``x0`` carries a
    graph (the student's last denoising step); the scores are evaluated without one."""
    grad = dmd_gradient(x0.detach(), real_x0, fake_x0, mask)
    target = (x0.detach().float() - grad).detach()
    return 0.5 * masked_mean((x0.float() - target).pow(2), mask)


def flow_matching_loss(
    velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Velocity regression ``|v - (noise - x0)|^2`` per item: ``[B]`` (``x0`` is a detached sample)."""
    return masked_mean((velocity.float() - (noise.float() - x0.detach().float())).pow(2), mask)


def frame_phoneme_loss(
    logits: torch.Tensor, phonemes: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per item ``[B]``: the mean cross-entropy of ``phonemes`` ``[B, T]`` (long) under ``logits`` ``[B, T, C]``
    over the tokens where ``mask`` ``[B, T]`` is 1 (all when None)."""
    ce = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), phonemes.clamp_min(0), reduction="none"
    )
    return masked_mean(ce, mask)


def chunk_mean_loss(
    x0_video: torch.Tensor, target: torch.Tensor, cell_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per item ``[B]``: the squared error between the means over a chunk's frames of ``x0_video`` and of
    ``target`` (both ``[B, C, L, h, w]``), averaged over the channels and the latent cells under
    ``cell_weights`` ``[h, w]`` (all cells alike when None)."""
    error = (x0_video.float().mean(2) - target.float().mean(2)).pow(2)  # [B, C, h, w]
    return masked_mean(error, cell_weights)


def timbre_loss(x0_audio: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """Per item ``[B]``: the squared error between the timbres of ``x0_audio`` and ``target`` (both ``[B, T_a,
    D_a]``, each token packing ``D_a / bins`` frames of ``bins`` frequency bins): their means per bin over the
    frames of the tokens ``mask`` ``[B, T_a]`` keeps, averaged over the bins (0 for an item with no frame kept)."""
    b, t, d = x0_audio.shape
    per_token = d // bins
    weights = mask.float().repeat_interleave(per_token, dim=1)[..., None]  # [B, frames, 1]
    count = weights.sum(1).clamp_min(1.0)

    def timbre(x: torch.Tensor) -> torch.Tensor:
        return (x.float().reshape(b, t * per_token, bins) * weights).sum(1) / count  # [B, bins]

    return (timbre(x0_audio) - timbre(target)).pow(2).mean(1) * (weights.sum((1, 2)) > 0).float()
