"""The residual formulation: the DiT denoises a chunk around its prior means (DESIGN.md section 7).

With prior means ``mu`` (:mod:`streamchar.denoiser.prior`) and a noise scale ``s`` per modality, the DiT's
state is the normalised residual ``z = (x0 - mu) / s``, and flow matching runs on it unchanged:
``z_t = (1 - t) z_0 + t noise``. In latent space that is a flow whose noise end point is ``mu + s * noise``
(Grad-TTS / PriorGrad's prior-centred flow; ``s`` sets how far from the prior the noise starts), and the
sampler's output is ``x0 = mu + s * z_0``. The model also reads ``mu`` (as the chunk's embedding and, for
audio, as a condition), so even a one-step student that corrects little keeps the prior's content.

A given chunk of audio (audio-driven windows and sessions) is its own prior mean: ``mu = x0``, ``z = 0``.

The plain formulation (no prior) is ``mu = 0``, ``s = 1``: these functions then return their input.
"""

from __future__ import annotations

import torch

from streamchar.denoiser.dit import JointDiT


def scales_of(model: JointDiT) -> tuple[float, float] | None:
    """``(video, audio)`` noise scales of a residual denoiser, None for a plain one."""
    return getattr(getattr(model, "module", model), "residual_scales", None)  # DDP wraps the model


def to_state(model: JointDiT, video: torch.Tensor, audio: torch.Tensor, mu_video: torch.Tensor | None,
             mu_audio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Clean latents -> the model's state: ``(x0 - mu) / s`` (residual) or ``x0`` (plain)."""
    scales = scales_of(model)
    if scales is None:
        return video, audio
    return (video - mu_video) / scales[0], (audio - mu_audio) / scales[1]


def to_latents(model: JointDiT, video: torch.Tensor, audio: torch.Tensor, mu_video: torch.Tensor | None,
               mu_audio: torch.Tensor | None,
               keep: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The model's state -> clean latents: ``mu + s * z`` (residual) or ``z`` (plain). ``keep`` scales
    the correction per modality: ``mu + keep * s * z`` (``engine.keep_correction``; 0: the means alone)."""
    scales = scales_of(model)
    if scales is None:
        return video, audio
    return mu_video + keep[0] * scales[0] * video, mu_audio + keep[1] * scales[1] * audio


def residual_batch(model: JointDiT, batch: dict, priors, audio_driven: torch.Tensor | None = None) -> dict:
    """A window batch in the model's state space: ``video`` / ``audio`` become the states of the clean
    latents (kept as ``video_latents`` / ``audio_latents``), and ``prior_video`` / ``prior_audio`` hold the
    means (:meth:`~streamchar.denoiser.prior.Priors.window_means`; ``audio_driven`` windows use their own
    audio). A plain model's batch comes back unchanged."""
    if scales_of(model) is None:
        return batch
    if priors is None:
        raise ValueError(
            "This denoiser refines prior means; load the priors (prior.audio_path, prior.video_path)."
        )
    mu_video, mu_audio = priors.window_means(batch, audio_driven)
    video, audio = to_state(model, batch["video"], batch["audio"], mu_video, mu_audio)
    return {**batch, "video_latents": batch["video"], "audio_latents": batch["audio"], "video": video,
            "audio": audio, "prior_video": mu_video, "prior_audio": mu_audio}  # fmt: skip
