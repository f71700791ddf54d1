"""Chunk-after-chunk generation with the window memory (offline; the engine does the same live).

The reference K/V are computed once; after the first chunk its first ``S`` latent frames become the
sink (once per session); before every later chunk the previous chunk's last ``M`` latent frames become
the motion frames (once per chunk): the :class:`~streamchar.memory.window.WindowMemory` bookkeeping,
shared with the engine. Every denoising step reuses these cached K/V.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext
from streamchar.denoiser.flow import EulerSampler, repeat_batch, set_reference_for_guidance, video_noise
from streamchar.denoiser.residual import Timbre, VideoMean, fed_back, to_latents, video_correction_mask
from streamchar.memory.window import WindowMemory


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


def enter_window(
    model: JointDiT,
    memory: WindowMemory,
    branches: int,
    cached: bool,
    references: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> WindowContext | None:
    """Before a chunk: move what enters the window (:meth:`WindowMemory.advance`) into the model's context
    cache, repeated for the ``branches`` guidance branches (``cached``); or, without the cache, return the
    whole window's clean context to recompute (``references``: reference video, voice and voice validity)."""
    sink, motion = memory.advance()
    if not cached:
        return window_context(*references, memory.sink, motion, model.timeline)
    if sink is not None:
        model.set_sink(repeat_batch(sink[0], branches), repeat_batch(sink[1], branches))
    if motion is not None:
        model.set_motion(repeat_batch(motion[0], branches), repeat_batch(motion[1], branches))
    return None


def start_unit_context(priors, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The acoustic prior's context before the first chunk: ``(units, speaking)`` ``[B, context]`` of padding."""
    return (torch.full((batch, priors.context), -1, dtype=torch.long, device=device),
            torch.zeros(batch, priors.context, dtype=torch.long, device=device))  # fmt: skip


def check_last_noise(sd: float) -> None:
    if sd < 0:
        raise ValueError(f"engine.prior_last_noise must be 0 (off) or more, got {sd}.")


def check_prior_anchor(anchor: float) -> None:
    if not 0.0 <= anchor < 1.0:
        raise ValueError(f"engine.prior_anchor must be in [0, 1) (0: off), got {anchor}.")


def prior_anchor_map(anchor: float, mouth_box, size: tuple[int, int]) -> torch.Tensor | None:
    """``engine.prior_anchor`` -> how far each latent cell ``[h, w]`` of the video prior's last motion latent is
    moved toward the reference: ``anchor`` outside ``engine.mouth_box``, nothing inside it (the lips follow the
    units, not the reference's closed mouth), in proportion to each cell's share outside; None when 0."""
    check_prior_anchor(anchor)
    return None if anchor == 0 else anchor * video_correction_mask("outside_mouth", mouth_box, size)


class LastNoise:
    """Gaussian noise of standard deviation ``sd`` on the last motion latent the video prior reads in a session
    (``engine.prior_last_noise``; never on the reference it starts from). A video prior fine-tuned on noisy
    last latents (``train.prior_video.last_noise``) pulls a noisy frame back toward the reference; read
    clean, its own small errors (trails where the head moved) pile up over minutes. Its own generator, seeded
    ``seed + 1``, so the DiT's noise is the same with it or without."""

    def __init__(self, sd: float, seed: int) -> None:
        check_last_noise(sd)
        self.sd, self.generator = sd, torch.Generator().manual_seed(seed + 1)

    def __call__(self, last: torch.Tensor) -> torch.Tensor:
        return last + self.sd * torch.randn(last.shape, generator=self.generator).to(last)


def prior_means(
    priors,
    cond: Conditions,
    given: torch.Tensor | None,
    unit_context: tuple[torch.Tensor, torch.Tensor],
    references: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    memory: WindowMemory,
    last_noise: LastNoise | None = None,
    anchor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The chunk's prior means ``(video [B, C, L, h, w], audio [B, L_a, D_a])`` and the next unit context: the
    acoustic prior over the planned units after ``unit_context`` (or the ``given`` speech itself), then the
    video prior from the reference, the last motion latent (the reference at the start, or without motion
    frames; when it is a motion latent, moved toward the reference by ``anchor`` ``[h, w]`` per cell
    (:func:`prior_anchor_map`, ``engine.prior_anchor``), then ``last_noise`` added) and the motion audio."""
    ref_video, ref_voice, ref_voice_valid = references
    if given is None:
        units = torch.cat([unit_context[0], cond.units], 1)
        speaking = torch.cat([unit_context[1], cond.speaking], 1)
        mu_audio = priors.audio_means(units, speaking, ref_voice, ref_voice_valid)
        unit_context = (units[:, -priors.context :], speaking[:, -priors.context :])
    else:
        mu_audio = given.float()
    reference = ref_video[:, :, 0].float()
    last, heard = memory.prior_context(reference, mu_audio.shape[-1])
    if memory.motion is not None:
        if anchor is not None:
            last = last + anchor.to(last) * (reference - last)
        if last_noise is not None:
            last = last_noise(last)
    return priors.video_means(reference, last, heard, mu_audio), mu_audio, unit_context


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
    keep: tuple[float, float] = (1.0, 1.0),
    timbre_bins: int | None = None,
    timbre_memory: float = 0.0,
    timbre_speech_only: bool = False,
    prior_last_noise: float = 0.0,
    prior_anchor: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
    video_time_memory: float | None = None,
    video_time_session: bool = False,
    video_detail: int = 0,
    video_skip: int = 0,
    video_feedback: bool = True,
    video_noise_share: float = 0.0,
    audio_noise_scale: float = 1.0,
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
        keep: ``(video, audio)``, how much of a residual model's correction of the means to keep
            (``engine.keep_correction``); ``timbre_bins`` keeps only the audio correction's timbre
            (:func:`~streamchar.denoiser.residual.timbre_of`, ``engine.audio_correction``), averaged over the
            chunks with ``timbre_memory`` (:class:`~streamchar.denoiser.residual.Timbre`, ``engine.timbre_memory``),
            over the tokens where a phoneme is planned alone with ``timbre_speech_only`` (``speech_timbre``).
        video_mask: ``[h, w]``, the share of the video correction played per latent cell
            (:func:`~streamchar.denoiser.residual.video_correction_mask`, ``engine.video_correction``).
        video_time_memory: None plays every frame's own video correction; a number its mean over the chunk's
            frames, a running average over the chunks with that memory (:class:`~streamchar.denoiser.residual.
            VideoMean`, ``engine.video_correction_time=mean`` and ``engine.video_correction_memory``);
            ``video_time_session`` its mean over all the chunks so far instead, the memory not read
            (``engine.video_correction_time=session``).
        video_detail: plays only the video correction's spatial detail over that many cells
            (:func:`~streamchar.denoiser.residual.correction_detail`, ``engine.video_correction_detail``).
        video_skip: the first that many chunks show the video means alone, their correction counted as zero in
            the average over chunks (``engine.video_correction_skip``).
        video_feedback: False feeds the next chunk the video prior's means alone, the correction only shown
            (:func:`~streamchar.denoiser.residual.fed_back`, ``engine.video_correction_feedback``).
        prior_last_noise: :class:`LastNoise` on the video prior's last latent (``engine.prior_last_noise``),
            seeded from ``generator``'s initial seed, as a session seeded alike.
        video_noise_share: the share of each chunk's video noise its frames have in common
            (:func:`~streamchar.denoiser.flow.video_noise`, ``engine.video_noise_share``).
        audio_noise_scale: each chunk's audio start noise times this (``engine.audio_noise_scale``).
        prior_anchor: ``[h, w]``, how far each cell of the video prior's last motion latent is moved toward the
            reference before that noise (:func:`prior_anchor_map`, ``engine.prior_anchor``).
    """
    tl = model.timeline
    b, c, _, h, w = ref_video.shape
    device = ref_video.device
    L, S, L_a = tl.chunk_latent_frames, tl.sink_latent_frames, tl.chunk_audio_tokens
    if S > L:
        raise ValueError(f"timeline.sink_latent_frames ({S}) must not exceed chunk_latent_frames ({L}).")
    if ref_voice_valid is None:
        ref_voice_valid = torch.ones(ref_voice.shape[:2], dtype=torch.bool, device=device)
    n = sampler.guidance.num_branches
    use_priors = model.residual or not refine
    if use_priors and priors is None:
        raise ValueError("This denoiser refines the priors' means; pass priors= (loaders.load_priors).")
    if use_priors:
        unit_context = start_unit_context(priors, b, device)
    timbre = None if timbre_bins is None else Timbre(timbre_bins, timbre_memory, timbre_speech_only)
    last_noise = LastNoise(prior_last_noise, generator.initial_seed()) if prior_last_noise > 0 else None
    video_time = None
    if video_time_session or video_time_memory is not None:
        video_time = VideoMean(video_time_memory or 0.0, session=video_time_session)
    videos, audios, seconds = [], [], []
    memory = WindowMemory(tl, use_sink=use_sink)
    with model.streaming():
        if use_cache:
            set_reference_for_guidance(model, sampler.guidance, ref_video, ref_voice, ref_voice_valid)
        for index, cond in enumerate(conditions):
            start = time.perf_counter()
            context = enter_window(model, memory, n, use_cache, (ref_video, ref_voice, ref_voice_valid))
            noise_video = video_noise((b, c, L, h, w), generator, video_noise_share).to(device)
            noise_audio = torch.randn(b, L_a, ref_voice.shape[-1], generator=generator)
            noise_audio = (audio_noise_scale * noise_audio).to(device)
            audio_in = given_audio[index].to(device) if given_audio is not None else None
            mu_video = mu_audio = None
            if use_priors:
                references = (ref_video, ref_voice, ref_voice_valid)
                mu_video, mu_audio, unit_context = prior_means(
                    priors, cond, audio_in, unit_context, references, memory, last_noise, prior_anchor
                )
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
                video, audio = to_latents(model, video.float(), audio.float(), mu_video, mu_audio, keep, timbre,
                                          cond.units, video_mask, video_time, video_detail,
                                          index < video_skip)  # fmt: skip
            if given_audio is not None:
                audio = given_audio[index].to(device).float()
            videos.append(video)
            audios.append(audio)
            memory.push(fed_back(video, mu_video, video_feedback), audio)
            seconds.append(time.perf_counter() - start)
    return Rollout(torch.cat(videos, dim=2), torch.cat(audios, dim=1), seconds)
