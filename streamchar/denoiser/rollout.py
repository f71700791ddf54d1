"""Chunk-after-chunk generation with the window memory (offline; the engine does the same live).

The reference K/V are computed once; after the first chunk its first ``S`` latent frames become the
sink (once per session); before every later chunk the previous chunk's last ``M`` latent frames become
the motion frames (once per chunk). Every denoising step reuses these cached K/V.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext
from streamchar.denoiser.flow import EulerSampler, repeat_batch, set_reference_for_guidance
from streamchar.denoiser.residual import to_latents


@dataclass(frozen=True)
class Rollout:
    video: torch.Tensor  # [B, C, T, h, w] normalised latents
    audio: torch.Tensor  # [B, T_a, D_a]
    chunk_seconds: list[float]  # wall time of each chunk (context update + sampling)


def window_context(
    ref_video: torch.Tensor,
    ref_voice: torch.Tensor,
    ref_voice_valid: torch.Tensor,
    sink: tuple[torch.Tensor, torch.Tensor] | None,
    motion: tuple[torch.Tensor, torch.Tensor] | None,
    timeline,
) -> WindowContext:
    """The clean context of a window for full recomputation (no cache): ``sink`` / ``motion`` are ``(video
    [B, C, S|M, h, w], audio [B, S_a|M_a, D_a])`` or None while absent (zeros marked invalid)."""
    b, c, _, h, w = ref_video.shape
    device = ref_video.device
    tl = timeline

    def segment(given, frames, tokens):
        if given is not None:
            return given[0], given[1], torch.ones(b, dtype=torch.bool, device=device)
        video = torch.zeros(b, c, frames, h, w, device=device, dtype=ref_video.dtype)
        audio = torch.zeros(b, tokens, ref_voice.shape[-1], device=device, dtype=ref_voice.dtype)
        return video, audio, torch.zeros(b, dtype=torch.bool, device=device)

    sink_video, sink_audio, has_sink = segment(sink, tl.sink_latent_frames, tl.sink_audio_tokens)
    motion_video, motion_audio, has_motion = segment(motion, tl.motion_latent_frames, tl.motion_audio_tokens)
    return WindowContext(
        ref_video=ref_video, ref_voice=ref_voice, ref_voice_valid=ref_voice_valid,
        ref_image_valid=torch.ones(b, dtype=torch.bool, device=device), sink_video=sink_video,
        sink_audio=sink_audio, has_sink=has_sink, motion_video=motion_video, motion_audio=motion_audio,
        has_motion=has_motion,
    )  # fmt: skip


@torch.no_grad()
def generate(
    model: JointDiT,
    sampler: EulerSampler,
    ref_video: torch.Tensor,
    ref_voice: torch.Tensor,
    conditions: list[Conditions],
    generator: torch.Generator,
    ref_voice_valid: torch.Tensor | None = None,
    given_audio: list[torch.Tensor] | None = None,
    use_cache: bool = True,
    use_sink: bool = True,
    priors=None,
    refine: bool = True,
) -> Rollout:
    """Generate ``len(conditions)`` chunks.

    Args:
        ref_video: ``[B, C, 1, h, w]``; ``ref_voice`` ``[B, R, D_a]``.
        conditions: per chunk, ``[B, L_a]`` units and speaking flags.
        given_audio: per chunk ``[B, L_a, D_a]`` clean audio (audio-driven mode), or None.
        use_cache: False recomputes the whole window at every step (the reference path; same result).
        use_sink: False never sets the sink chunk (an ablation: the window holds references and motion only).
        priors: the :class:`~streamchar.denoiser.prior.Priors` a residual ``model`` refines: each chunk's means
            come from the units so far and the last latent and audio generated, as in the engine.
        refine: False plays the priors' means alone (the model is not run; an ablation).
    """
    tl = model.timeline
    b, c, _, h, w = ref_video.shape
    device = ref_video.device
    L, S, M = tl.chunk_latent_frames, tl.sink_latent_frames, tl.motion_latent_frames
    M_a, S_a, L_a = tl.motion_audio_tokens, tl.sink_audio_tokens, tl.chunk_audio_tokens
    if S > L:
        raise ValueError(f"timeline.sink_latent_frames ({S}) must not exceed chunk_latent_frames ({L}).")
    if ref_voice_valid is None:
        ref_voice_valid = torch.ones(ref_voice.shape[:2], dtype=torch.bool, device=device)
    n = sampler.guidance.num_branches
    use_priors = model.residual or not refine
    if use_priors and priors is None:
        raise ValueError("This denoiser refines the priors' means; pass priors= (loaders.load_priors).")
    if use_priors:
        unit_context = (torch.full((b, priors.context), -1, dtype=torch.long, device=device),
                        torch.zeros(b, priors.context, dtype=torch.long, device=device))  # fmt: skip
    videos, audios, seconds = [], [], []
    with model.streaming():
        if use_cache:
            set_reference_for_guidance(model, sampler.guidance, ref_video, ref_voice, ref_voice_valid)
        for index, cond in enumerate(conditions):
            start = time.perf_counter()
            context = None
            if index > 0:
                sink_video, sink_audio = videos[0][:, :, :S], audios[0][:, :S_a]
                motion_video, motion_audio = videos[-1][:, :, -M:], audios[-1][:, -M_a:]
                if use_cache:
                    if index == 1 and use_sink:
                        model.set_sink(repeat_batch(sink_video, n), repeat_batch(sink_audio, n))
                    model.set_motion(repeat_batch(motion_video, n), repeat_batch(motion_audio, n))
            if not use_cache:
                context = window_context(ref_video, ref_voice, ref_voice_valid,
                                         (sink_video, sink_audio) if index > 0 and use_sink else None,
                                         (motion_video, motion_audio) if index > 0 else None, tl)  # fmt: skip
            noise_video = torch.randn(b, c, L, h, w, generator=generator).to(device)
            noise_audio = torch.randn(b, L_a, ref_voice.shape[-1], generator=generator).to(device)
            audio_in = given_audio[index].to(device) if given_audio is not None else None
            mu_video = mu_audio = None
            if use_priors:
                if audio_in is None:
                    units = torch.cat([unit_context[0], cond.units], 1)
                    speaking = torch.cat([unit_context[1], cond.speaking], 1)
                    mu_audio = priors.audio_means(units, speaking, ref_voice, ref_voice_valid)
                    unit_context = (units[:, -priors.context :], speaking[:, -priors.context :])
                else:
                    mu_audio = audio_in.float()
                reference = ref_video[:, :, 0].float()
                last = videos[-1][:, :, -1] if videos else reference
                heard = (
                    audios[-1][:, -M_a:] if audios else torch.zeros(b, M_a, mu_audio.shape[-1], device=device)
                )
                mu_video = priors.video_means(reference, last, heard, mu_audio)
                if model.residual:
                    cond = Conditions(cond.units, cond.speaking, mu_audio, mu_video)
                if audio_in is not None and model.residual:
                    audio_in = torch.zeros_like(audio_in)  # a given chunk is its own mean
            if not refine:
                video, audio = mu_video, mu_audio
            else:
                video, audio = sampler.sample(
                    model, noise_video, noise_audio, cond, context, given_audio=audio_in
                )
                video, audio = to_latents(model, video.float(), audio.float(), mu_video, mu_audio)
            if given_audio is not None:
                audio = given_audio[index].to(device).float()
            videos.append(video)
            audios.append(audio)
            seconds.append(time.perf_counter() - start)
    return Rollout(torch.cat(videos, dim=2), torch.cat(audios, dim=1), seconds)
