"""Flow matching (rectified flow) and its Euler sampler with multi-condition guidance.

``x_t = (1 - t) x_0 + t noise``; the model predicts the velocity ``noise - x_0``; ``x_0 = x_t - t v``.
Training draws ``t`` from a logit-normal distribution and warps it with ``shift`` (shift > 1 spends
more time at high noise, which larger latents need). The sampler integrates from ``t = 1`` to 0 on
the same warped grid.

Guidance has separate scales for the audio conditions, the reference image and the reference voice.
Each scale ``s_k != 1`` adds a batch branch with condition ``k`` dropped, and
``v = v_full + sum_k (s_k - 1) (v_full - v_without_k)``; all scales 1 is a single pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Warp ``t`` in [0, 1] towards 1 (noise) for ``shift > 1``: ``s t / (1 + (s - 1) t)``."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class FlowMatching:
    """``max_t < 1`` trains only the low-noise end of the flow (in ``(0, max_t]``), for a model sampled
    shallowly from a start below it (see :class:`EulerSampler`)."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    max_t: float = 1.0

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``[n]`` logit-normal timesteps, shifted, scaled to ``(0, max_t]``."""
        z = torch.randn(n, generator=generator) * self.logit_std + self.logit_mean
        return (self.max_t * shift_timesteps(torch.sigmoid(z), self.shift)).to(device)

    @staticmethod
    def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (x.dim() - 1))).to(x)

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._expand(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def predict_x0(self, x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t - self._expand(t, x_t) * velocity


def check_video_noise_share(share: float) -> None:
    if not 0.0 <= share < 1.0:
        raise ValueError(
            f"engine.video_noise_share must be in [0, 1) (0: each frame its own noise), got {share}."
        )


def check_audio_noise_scale(scale: float) -> None:
    if not 0.0 <= scale <= 2.0:
        raise ValueError(
            f"engine.audio_noise_scale must be in [0, 2] (1: the noise as trained), got {scale}."
        )


def mixed_noise(own: torch.Tensor, shared: torch.Tensor, share: float) -> torch.Tensor:
    """``sqrt(share) * shared + sqrt(1 - share) * own``: frames' own noise ``[B, C, L, h, w]`` with one draw
    ``[B, C, 1, h, w]`` they all have in common (PYoCo's mixed noise); each frame's noise stays unit Gaussian."""
    return math.sqrt(share) * shared + math.sqrt(1 - share) * own


def video_noise(shape: tuple[int, ...], generator: torch.Generator, share: float = 0.0) -> torch.Tensor:
    """A chunk's video start noise ``[B, C, L, h, w]``: each frame its own, or with ``share`` r > 0
    ``sqrt(r) * shared + sqrt(1 - r) * own``, one shared draw per chunk (drawn after the frames' own), as a
    teacher trained with ``train.teacher.video_noise_share`` r saw it; each frame's noise stays unit Gaussian."""
    own = torch.randn(shape, generator=generator)
    if share <= 0:
        return own
    b, c, _, h, w = shape
    return mixed_noise(own, torch.randn((b, c, 1, h, w), generator=generator), share)


def sampling_grid(steps: int, shift: float = 1.0, start: float = 1.0) -> torch.Tensor:
    """``[steps + 1]`` timesteps from ``start`` (1: pure noise) down to 0."""
    if steps < 1:
        raise ValueError(f"The sampler needs at least one step, got {steps}.")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"The sampler's start time must be in (0, 1], got {start}.")
    return start * shift_timesteps(torch.linspace(1.0, 0.0, steps + 1), shift)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance scales (1 = no guidance for that condition)."""

    conditions: float = 1.0
    ref_image: float = 1.0
    ref_voice: float = 1.0

    def branches(self) -> list[tuple[str, float]]:
        """The batch branches after the full one: (dropped condition, its scale)."""
        scales = (
            ("conditions", self.conditions),
            ("ref_image", self.ref_image),
            ("ref_voice", self.ref_voice),
        )
        return [(name, s) for name, s in scales if s != 1.0]

    @property
    def num_branches(self) -> int:
        return 1 + len(self.branches())

    def drops(self, batch: int, device=None) -> dict[str, torch.Tensor]:
        """Per expanded item (branch-major, ``[n_branches * batch]``), which condition is dropped."""
        names = ["full"] + [name for name, _ in self.branches()]
        out = {}
        for condition in ("conditions", "ref_image", "ref_voice"):
            out[condition] = torch.tensor([n == condition for n in names], device=device).repeat_interleave(
                batch
            )
        return out

    def combine(self, velocity: torch.Tensor, batch: int) -> torch.Tensor:
        """Branch-major ``[n_branches * B, ...]`` velocities -> guided ``[B, ...]``."""
        full = velocity[:batch]
        guided = full
        for i, (_, scale) in enumerate(self.branches(), start=1):
            guided = guided + (scale - 1) * (full - velocity[i * batch : (i + 1) * batch])
        return guided


def repeat_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` repeated ``n`` times along the batch: one copy per guidance branch (branch-major)."""
    return x.repeat(n, *([1] * (x.dim() - 1)))


def expand_for_guidance(guidance: Guidance, context: WindowContext) -> WindowContext:
    """The context repeated per guidance branch, with the branch's reference dropped."""
    b, n = context.ref_video.shape[0], guidance.num_branches
    drops = guidance.drops(b, context.ref_video.device)
    rep = WindowContext(*(repeat_batch(getattr(context, f), n) for f in WindowContext.__dataclass_fields__))
    return rep.with_dropped_references(drops["ref_image"], drops["ref_voice"])


def set_reference_for_guidance(
    model: JointDiT,
    guidance: Guidance,
    ref_video: torch.Tensor,
    ref_voice: torch.Tensor,
    ref_voice_valid: torch.Tensor | None = None,
) -> None:
    """``model.set_reference`` for a streaming session whose batch holds every guidance branch."""
    b, n = ref_video.shape[0], guidance.num_branches
    drops = guidance.drops(b, ref_video.device)
    if ref_voice_valid is None:
        ref_voice_valid = torch.ones(ref_voice.shape[:2], dtype=torch.bool, device=ref_voice.device)
    model.set_reference(
        repeat_batch(ref_video, n),
        repeat_batch(ref_voice, n),
        repeat_batch(ref_voice_valid, n) & ~drops["ref_voice"][:, None],
        ~drops["ref_image"],
    )


def guided_velocity(
    model: JointDiT,
    guidance: Guidance,
    video: torch.Tensor,
    audio: torch.Tensor,
    timesteps: tuple[torch.Tensor, torch.Tensor],
    conditions: Conditions,
    context: WindowContext | None = None,
    audio_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided velocity of a ``[B, ...]`` batch: one model call over every guidance branch.

    ``timesteps``: ``(t_video [B], t_audio [B])``. ``context`` None means inside ``model.streaming()``
    with a cache built for ``guidance.num_branches * B`` items.
    """
    b, n = video.shape[0], guidance.num_branches
    drops = guidance.drops(b, video.device)
    cond = conditions.repeated(n).dropped(drops["conditions"], model.num_units)
    ctx = expand_for_guidance(guidance, context) if context is not None else None
    valid = repeat_batch(audio_valid, n) if audio_valid is not None else None
    t = tuple(repeat_batch(x, n) for x in timesteps)
    v_video, v_audio = model(repeat_batch(video, n), repeat_batch(audio, n), t, cond, ctx, valid)
    return guidance.combine(v_video, b), guidance.combine(v_audio, b)


@dataclass(frozen=True)
class EulerSampler:
    """Euler steps on ``sampling_grid(steps, shift, start)``. ``start < 1`` is shallow sampling (DiffSinger):
    the noise is scaled to the state at ``start`` whose clean end is 0, which for a residual denoiser is the
    priors' means noised to ``start`` (``mu + start * s * noise``). ``start=None``: the model's own
    ``sample_start`` (what it was trained for; 1 for a plain denoiser), and for the video its
    ``sample_start_video`` (the video's own grid, as many steps, from there)."""

    steps: int = 16
    shift: float = 1.0
    guidance: Guidance = Guidance()
    start: float | None = None

    @torch.no_grad()
    def sample(
        self,
        model: JointDiT,
        video_noise: torch.Tensor,
        audio_noise: torch.Tensor,
        conditions: Conditions,
        context: WindowContext | None = None,
        given_audio: torch.Tensor | None = None,
        audio_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrate one chunk from noise to clean latents.

        Args:
            video_noise: ``[B, C, L, h, w]``; ``audio_noise`` ``[B, L_a, D_a]``.
            conditions: the chunk's audio conditions (``[B, L_a]``).
            context: the window context, or None inside ``model.streaming()`` with a cache built for
                ``guidance.num_branches * B`` items (``set_reference_for_guidance``, then
                ``set_sink`` / ``set_motion`` on repeated latents).
            given_audio: ``[B, L_a, D_a]`` clean audio for audio-driven generation (kept at t = 0).

        Returns:
            ``(video [B, C, L, h, w], audio [B, L_a, D_a])``.
        """
        start = self.start if self.start is not None else float(getattr(model, "sample_start", 1.0))
        start_video = start if self.start is not None else float(getattr(model, "sample_start_video", start))
        video = start_video * video_noise
        audio = given_audio if given_audio is not None else start * audio_noise
        grid = sampling_grid(self.steps, self.shift, start).tolist()
        grid_video = sampling_grid(self.steps, self.shift, start_video).tolist()
        steps = zip(grid_video[:-1], grid_video[1:], grid[:-1], grid[1:], strict=True)
        for tv, tv_next, t, t_next in steps:
            t_video = torch.full((video.shape[0],), tv, device=video.device)
            t_audio = torch.zeros_like(t_video) if given_audio is not None else torch.full_like(t_video, t)
            v_video, v_audio = guided_velocity(
                model, self.guidance, video, audio, (t_video, t_audio), conditions, context, audio_valid
            )
            video = video + (tv_next - tv) * v_video
            if given_audio is None:
                audio = audio + (t_next - t) * v_audio
        return video, audio
