"""The residual formulation: the DiT denoises a chunk around its prior means (DESIGN.md section 7).

With prior means ``mu`` (:mod:`streamchar.denoiser.prior`) and a noise scale ``s`` per modality, the DiT's
state is the normalised residual ``z = (x0 - mu) / s``, and flow matching runs on it unchanged:
``z_t = (1 - t) z_0 + t noise``. In latent space that is a flow whose noise end point is ``mu + s * noise``
(Grad-TTS / PriorGrad's prior-centred flow; ``s`` sets how far from the prior the noise starts), and the
sampler's output is ``x0 = mu + s * z_0``. The model also reads ``mu`` (as the chunk's embedding and, for
audio, as a condition), so even a one-step student that corrects little keeps the prior's content.

A given chunk of audio (audio-driven windows and sessions) is its own prior mean: ``mu = x0``, ``z = 0``.

How much of the correction ``s * z`` is played is a setting (``engine.keep_correction``, a share per modality;
``engine.audio_correction``: ``whole``, or ``timbre``, the audio correction's mean over the chunk's frames per
frequency bin, :func:`timbre_of`: the prior keeps the time-varying part, which carries the phonemes;
``engine.timbre_memory`` averages it over the session's chunks, :class:`Timbre`; ``engine.video_correction``:
``whole``, or ``outside_mouth``, the video correction played only outside ``engine.mouth_box``, so the video
prior keeps the lip shapes, :func:`video_correction_mask`; ``engine.video_correction_time``: ``frames``, or
``mean``, the video correction's mean over the chunk's frames (averaged over the session's chunks with
``engine.video_correction_memory``; ``session``: over all the session's chunks so far),
:func:`video_correction_time`, so what it adds holds still instead of flickering from frame to frame;
``engine.video_correction_detail``: its spatial detail alone, :func:`correction_detail`;
``engine.video_correction_skip``: a session's first chunks show the means alone, their correction counted as zero
in the average over chunks; ``engine.video_correction_feedback``: whether the next chunk reads the
corrected video or the means alone, :func:`fed_back`).

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


AUDIO_CORRECTIONS = ("whole", "timbre", "speech_timbre")


def check_audio_correction(kind: str) -> None:
    if kind not in AUDIO_CORRECTIONS:
        raise ValueError(f"engine.audio_correction must be {' or '.join(AUDIO_CORRECTIONS)}, got '{kind}'.")


def audio_correction_bins(kind: str, audio_codec) -> int | None:
    """``engine.audio_correction`` -> the ``timbre_bins`` of :func:`to_latents`: None (``whole``), or the
    codec's frequency bins per frame (a mel codec's ``n_mels``; otherwise every latent dimension is one) for
    ``timbre`` and ``speech_timbre``."""
    check_audio_correction(kind)
    if kind == "whole":
        return None
    return getattr(audio_codec, "n_mels", None) or audio_codec.latent_dim


def timbre_of(correction: torch.Tensor, bins: int) -> torch.Tensor:
    """A chunk's audio correction ``[B, T_a, D_a]`` (``D_a`` packs ``D_a / bins`` frames of ``bins``
    frequency bins) -> its mean over the chunk's frames, per bin, at every frame: what the correction does
    to the chunk's average spectrum (the voice's timbre), without what it does to the phonemes in time."""
    b, t, d = correction.shape
    frames = correction.reshape(b, t * d // bins, bins)
    return frames.mean(1, keepdim=True).expand_as(frames).reshape(b, t, d)


class Timbre:
    """Keeps only the timbre of a session's audio corrections, chunk after chunk (``engine.audio_correction=
    timbre``). With ``memory`` m > 0 (``engine.timbre_memory``), the timbre played is a running average per
    batch row (a character): ``m * the last one played + (1 - m) * this chunk's`` (:func:`timbre_of`), so the
    voice's spectrum settles over the session instead of stepping at every chunk boundary; 0 plays each
    chunk's own. With ``speech_only`` (``engine.audio_correction=speech_timbre``), the mean is taken over the
    chunk's sounding tokens (a phoneme planned, not silence: :func:`sounding`) and played on them alone:
    silence keeps the prior's mean, and a chunk without a phoneme leaves the running timbre as it was. One per
    session: it remembers the last chunk."""

    def __init__(self, bins: int, memory: float = 0.0, speech_only: bool = False) -> None:
        check_timbre_memory(memory)
        self.bins, self.memory, self.speech_only = bins, memory, speech_only
        self._last: torch.Tensor | None = None  # [B, 1, bins]: the timbre played last
        self._seen: torch.Tensor | None = None  # [B, 1, 1]: whether the row has a timbre yet

    def __call__(self, correction: torch.Tensor, sounding: torch.Tensor | None = None) -> torch.Tensor:
        """``correction [B, T_a, D_a]`` (and, with ``speech_only``, the chunk's ``sounding [B, T_a]`` flags)
        -> the timbre to play at every token."""
        b, t, d = correction.shape
        per_token = d // self.bins
        frames = correction.reshape(b, t * per_token, self.bins)
        if self.speech_only:
            if sounding is None:
                raise ValueError("engine.audio_correction=speech_timbre needs the chunk's sounding flags.")
            weight = sounding.to(frames).repeat_interleave(per_token, 1).unsqueeze(-1)  # [B, T_a * k, 1]
            count = weight.sum(1, keepdim=True)
            mean = (frames * weight).sum(1, keepdim=True) / count.clamp(min=1.0)
            spoke = count > 0
        else:
            weight = None
            mean = frames.mean(1, keepdim=True)
            spoke = torch.ones(b, 1, 1, dtype=torch.bool, device=frames.device)
        if self._last is not None and self._last.shape == mean.shape:
            last, seen = self._last.to(mean), self._seen
            blended = torch.where(seen, self.memory * last + (1.0 - self.memory) * mean, mean)
            mean = torch.where(spoke, blended, last)  # a row silent for the whole chunk keeps its timbre
            spoke = spoke | seen
        self._last, self._seen = mean, spoke
        played = mean.expand_as(frames) if weight is None else mean * weight
        return played.reshape(b, t, d)


def sounding(units: torch.Tensor) -> torch.Tensor:
    """``[B, T_a]`` units -> True where a phoneme is planned (silence is unit 0:
    :func:`~streamchar.data.phonemes.frame_units`)."""
    from streamchar.data.phonemes import SILENCE_ID

    return units != SILENCE_ID


VIDEO_CORRECTIONS = ("whole", "outside_mouth")


def check_video_correction(kind: str, box, margin: float = 0.0) -> None:
    """``engine.video_correction``, ``engine.mouth_box`` and ``engine.video_correction_margin`` (checked whatever
    the kind: a config holds all three)."""
    if not 0.0 <= margin < 0.5:
        raise ValueError(
            f"engine.video_correction_margin must be in [0, 0.5) (a fraction of the frame), got {margin}."
        )
    if kind not in VIDEO_CORRECTIONS:
        raise ValueError(f"engine.video_correction must be {' or '.join(VIDEO_CORRECTIONS)}, got '{kind}'.")
    box = list(box)
    if len(box) != 4 or not (0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0):
        raise ValueError(
            f"engine.mouth_box must be [x0, y0, x1, y1], fractions of the frame with x0 < x1 and y0 < y1, got {box}."
        )


def video_correction_mask(kind: str, box, size: tuple[int, int], margin: float = 0.0) -> torch.Tensor | None:
    """``engine.video_correction`` -> the share of the video correction played at each latent cell ``[h, w]``:
    None (``whole``: all of it), or for ``outside_mouth`` one minus the share of the cell inside ``box``
    (``(x0, y0, x1, y1)``, fractions of the frame: where the character's mouth is drawn) widened by ``margin`` on
    every side (clipped to the frame), so the video prior's lip shapes stay as they are and the correction acts
    on the rest of the face. The margin keeps the correction off the cells whose decoded pixels reach into the
    mouth (the video decoder's receptive field spans neighbouring cells)."""
    check_video_correction(kind, box, margin)
    if kind == "whole":
        return None
    from streamchar.denoiser.objective import mouth_weight_map  # the objective imports this module

    x0, y0, x1, y1 = (float(v) for v in box)
    widened = [max(0.0, x0 - margin), max(0.0, y0 - margin), min(1.0, x1 + margin), min(1.0, y1 + margin)]
    boxes = torch.tensor(widened).reshape(1, 1, 4)
    return mouth_weight_map(boxes, torch.ones(1), size, 0.0)[0, 0]  # 1 + (0 - 1) * inside


def check_timbre_memory(memory: float, name: str = "engine.timbre_memory") -> None:
    if not 0.0 <= memory < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (0: each chunk's own mean), got {memory}.")


VIDEO_CORRECTION_TIMES = ("frames", "mean", "session")


def check_video_correction_time(kind: str, memory: float) -> None:
    if kind not in VIDEO_CORRECTION_TIMES:
        raise ValueError(
            f"engine.video_correction_time must be {' or '.join(VIDEO_CORRECTION_TIMES)}, got '{kind}'."
        )
    check_timbre_memory(memory, "engine.video_correction_memory")


class VideoMean:
    """Keeps only the mean over a chunk's frames of a session's video corrections (``engine.video_correction_time
    =mean``): each latent cell gets one offset for the whole chunk, a running average over the session's chunks
    with ``memory`` (``engine.video_correction_memory``), as :class:`Timbre` does for the voice's spectrum; with
    ``session`` (``engine.video_correction_time=session``) the plain mean of every chunk's so far (a running
    sum over a count), so the correction settles on what it adds to the session as a whole. A 2-step student's
    correction differs from frame to frame, and chunk to chunk, by its sampling noise as much as by what it adds
    (edges and pupils that shift by a pixel: flicker the ground truth does not have); its mean keeps the part
    that holds still. One per session: it remembers the last chunk."""

    def __init__(self, memory: float = 0.0, session: bool = False) -> None:
        self.memory, self.session = memory, session
        self._running: Timbre | None = None
        # session: the sum of the chunks' frame means [B, C, 1, h, w], and how many chunks it holds
        self._total: torch.Tensor | None = None
        self._chunks = 0

    def __call__(self, correction: torch.Tensor) -> torch.Tensor:
        """``correction [B, C, L, h, w]`` -> its running mean over frames, at every frame."""
        b, c, length, h, w = correction.shape
        if self.session:
            mean = correction.mean(2, keepdim=True)
            if self._total is None or self._total.shape != mean.shape:
                self._total, self._chunks = torch.zeros_like(mean), 0
            self._total, self._chunks = self._total + mean, self._chunks + 1
            return (self._total / self._chunks).expand_as(correction)
        if self._running is None or self._running.bins != c * h * w:
            self._running = Timbre(c * h * w, self.memory)
        frames = correction.permute(0, 2, 1, 3, 4).reshape(b, length, c * h * w)
        return self._running(frames).reshape(b, length, c, h, w).permute(0, 2, 1, 3, 4)


def video_correction_time(kind: str, memory: float = 0.0) -> VideoMean | None:
    """``engine.video_correction_time`` (and ``engine.video_correction_memory``) -> the ``video_time`` of
    :func:`to_latents` for one session: None (``frames``: every frame its own correction) or a fresh
    :class:`VideoMean` (``mean``: averaged over chunks with the memory; ``session``: over all of them)."""
    check_video_correction_time(kind, memory)
    return None if kind == "frames" else VideoMean(memory, session=kind == "session")


def check_video_correction_detail(cells: int) -> None:
    if cells != 0 and (cells < 3 or cells % 2 == 0):
        raise ValueError(
            f"engine.video_correction_detail must be 0 (off) or an odd number of latent cells, 3 or more, got {cells}."
        )


def correction_detail(correction: torch.Tensor, cells: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The spatial detail of a video correction ``[B, C, L, h, w]`` (``engine.video_correction_detail``): at each
    cell the correction minus its mean over the ``cells`` x ``cells`` cells around it, among the cells it is
    played on (``mask`` ``[h, w]`` > 0: those outside the mouth box; all without a mask), the frame's edge
    repeated. What stays is the texture it adds (edges, pupils, sharpness); what goes is its smooth part, which
    the video decoder turns into shifts of colour and shape that move a long session away from the character's
    own frames (docs/results/formulations.md, "The video correction's detail alone: shipped")."""
    check_video_correction_detail(cells)
    if not cells:
        return correction
    b, c, length, h, w = correction.shape
    played = torch.ones(h, w) if mask is None else (mask > 0).float()
    played = played.to(correction)[None, None]
    x = correction.reshape(b * c * length, 1, h, w)
    pad, box = (cells // 2,) * 4, torch.ones(1, 1, cells, cells, dtype=x.dtype, device=x.device)
    total = torch.nn.functional.conv2d(torch.nn.functional.pad(x * played, pad, mode="replicate"), box)
    count = torch.nn.functional.conv2d(torch.nn.functional.pad(played, pad, mode="replicate"), box)
    return ((x - total / count.clamp_min(1e-6)) * played).reshape(correction.shape)


def check_video_correction_skip(chunks: int) -> None:
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 0:
        raise ValueError(
            f"engine.video_correction_skip must be a whole number of chunks, 0 or more (0: off), got {chunks!r}."
        )


def audio_correction_of(kind: str, audio_codec, memory: float = 0.0) -> Timbre | None:
    """``engine.audio_correction`` (and ``engine.timbre_memory``) -> the ``timbre`` of :func:`to_latents` for
    one session: None (``whole``) or a fresh :class:`Timbre`."""
    bins = audio_correction_bins(kind, audio_codec)
    return None if bins is None else Timbre(bins, memory, speech_only=kind == "speech_timbre")


def to_latents(model: JointDiT, video: torch.Tensor, audio: torch.Tensor, mu_video: torch.Tensor | None,
               mu_audio: torch.Tensor | None, keep: tuple[float, float] = (1.0, 1.0), timbre: Timbre | None = None,
               units: torch.Tensor | None = None, video_mask: torch.Tensor | None = None,
               video_time: VideoMean | None = None, video_detail: int = 0,
               skip_video: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The model's state -> clean latents: ``mu + s * z`` (residual) or ``z`` (plain). ``keep`` scales
    the correction per modality: ``mu + keep * s * z`` (``engine.keep_correction``; 0: the means alone);
    ``timbre`` keeps only the audio correction's timbre (:class:`Timbre`, given the chunk's ``units``;
    ``engine.audio_correction``); ``video_mask`` ``[h, w]`` scales the video correction per latent cell
    (:func:`video_correction_mask`, ``engine.video_correction``); ``video_time`` keeps only its mean over the
    chunk's frames (:class:`VideoMean`, ``engine.video_correction_time``); ``video_detail`` only its spatial
    detail over that many cells (:func:`correction_detail`, ``engine.video_correction_detail``); ``skip_video``
    (one of a session's first ``engine.video_correction_skip`` chunks) shows the video means alone and counts the
    chunk's video correction as zero in ``video_time``'s average."""
    scales = scales_of(model)
    if scales is None:
        return video, audio
    correction = scales[1] * audio
    if timbre is not None:
        correction = timbre(correction, None if units is None else sounding(units))
    video_correction = scales[0] * video
    if skip_video:
        video_correction = torch.zeros_like(video_correction)
    if video_time is not None:
        video_correction = video_time(video_correction)
    if video_mask is not None:
        video_correction = video_correction * video_mask.to(video_correction)
    if video_detail:
        video_correction = correction_detail(video_correction, video_detail, video_mask)
    return mu_video + keep[0] * video_correction, mu_audio + keep[1] * correction


def fed_back(played_video: torch.Tensor, mu_video: torch.Tensor | None, feedback: bool) -> torch.Tensor:
    """The video latents later chunks read (the window memory's sink chunk and motion frames, the video prior's
    last latent) after ``played_video`` is shown: those same latents, or with ``feedback`` off
    (``engine.video_correction_feedback``) the video prior's means ``mu_video`` alone, so the correction is shown
    and never read back. A plain model (no means) feeds back what it played."""
    return played_video if feedback or mu_video is None else mu_video.to(played_video)


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
