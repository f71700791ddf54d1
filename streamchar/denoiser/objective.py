"""The teacher's flow-matching objective over training windows, kept apart from the training loop.

Randomness is drawn first (:meth:`TeacherObjective.draw`: timesteps, noise, guidance dropout, which
windows are audio-driven) and the loss is a pure function of the batch and the draws, so a batch can be
split across processes and give the same gradient as one process, and a resumed run draws the same
numbers as an uninterrupted one.

Loss per window: mean squared velocity error over the current chunk's video latents (each latent cell
weighted ``mouth_weight`` times inside the frame's mouth box, normalised, where the window has one), plus
``audio_loss_weight`` times the same over its valid audio tokens unless the window is audio-driven
(its audio is then given clean at t = 0 and carries no loss). The batch loss is the mean over windows.

A residual denoiser (:mod:`streamchar.denoiser.residual`) is trained on the states around the priors'
means, which the loss computes from the frozen ``priors`` after the draws (an audio-driven window's audio
mean is its own audio).

Two settings train the video tokens apart from the audio's. ``max_t_video`` draws the video's time on its
own, in ``(0, max_t_video]``: a residual teacher whose audio is sampled shallowly can learn the whole flow for
the video, whose shallow start holds no residual for it to denoise (docs/results/formulations.md, "What the
video correction is: its start noise"). ``video_noise_share`` gives every frame of a window one share of its
noise, ``sqrt(r) * shared + sqrt(1 - r) * own`` (each frame's noise still unit Gaussian; PYoCo's mixed noise),
as the residual it stands in for is shared by frames that follow each other. Both are drawn after every
other number, so a run without them draws what it drew before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext
from streamchar.denoiser.flow import FlowMatching, mixed_noise
from streamchar.denoiser.residual import residual_batch


def mouth_weight_map(
    boxes: torch.Tensor, has_box: torch.Tensor, size: tuple[int, int], weight: float
) -> torch.Tensor:
    """Per-latent-cell loss weights ``[B, L, h, w]``: ``1 + (weight - 1) * f`` where ``f`` is the fraction of the
    cell inside the frame's mouth box (``boxes`` ``[B, L, 4]``, ``(x0, y0, x1, y1)`` fractions of the frame);
    all ones for items without a box (``has_box`` ``[B]`` False) or with ``weight`` 1."""
    h, w = size
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))  # [B, L, 1]
    edges_x = torch.arange(w + 1, device=boxes.device, dtype=boxes.dtype) / w
    edges_y = torch.arange(h + 1, device=boxes.device, dtype=boxes.dtype) / h
    inside_x = (torch.minimum(x1, edges_x[1:]) - torch.maximum(x0, edges_x[:-1])).clamp_min(
        0
    ) * w  # [B, L, w]
    inside_y = (torch.minimum(y1, edges_y[1:]) - torch.maximum(y0, edges_y[:-1])).clamp_min(
        0
    ) * h  # [B, L, h]
    fraction = inside_y[..., :, None] * inside_x[..., None, :]  # [B, L, h, w]
    fraction = fraction * has_box.to(fraction.dtype).reshape(-1, 1, 1, 1)
    return 1.0 + (weight - 1.0) * fraction


def weighted_video_error(error: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-item mean of ``error`` ``[B, C, L, h, w]`` under cell weights ``[B, L, h, w]`` (normalised, so the
    loss keeps its scale whatever the weights)."""
    w = weights[:, None].expand_as(error)
    return (error * w).flatten(1).sum(1) / w.flatten(1).sum(1)


@dataclass(frozen=True)
class TeacherObjective:
    flow: FlowMatching = FlowMatching()
    cond_drop: float = 0.1
    ref_image_drop: float = 0.1
    ref_voice_drop: float = 0.1
    audio_driven_fraction: float = 0.25
    audio_driven_cond_drop: float = 0.5
    audio_loss_weight: float = 1.0
    mouth_weight: float = 1.0
    max_t_video: float | None = None  # None: the video's time is the audio's
    video_noise_share: float = 0.0

    def __post_init__(self) -> None:
        if self.max_t_video is not None and not 0.0 < self.max_t_video <= 1.0:
            raise ValueError(
                f"train.teacher.max_t_video must be in (0, 1] (or null), got {self.max_t_video}."
            )
        if not 0.0 <= self.video_noise_share < 1.0:
            raise ValueError(
                f"train.teacher.video_noise_share must be in [0, 1), got {self.video_noise_share}."
            )

    def draw(
        self, batch: dict, generator: torch.Generator, total: int | None = None, offset: int = 0
    ) -> dict[str, torch.Tensor]:
        """Every random number one step needs, for the ``B`` windows of ``batch``.

        With ``total``, draws for ``total`` windows and returns windows ``offset .. offset + B``: each
        process of a data-parallel run takes its slice of the global batch's draws, so the run matches
        one process with the whole batch.
        """
        b = batch["video"].shape[0]
        n = b if total is None else total

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        audio_driven = coin(self.audio_driven_fraction)
        drop_cond = torch.where(audio_driven, coin(self.audio_driven_cond_drop), coin(self.cond_drop))
        draws = {
            "t": self.flow.sample_timesteps(n, generator),
            "noise_video": torch.randn((n, *batch["video"].shape[1:]), generator=generator),
            "noise_audio": torch.randn((n, *batch["audio"].shape[1:]), generator=generator),
            "audio_driven": audio_driven,
            "drop_cond": drop_cond,
            "drop_ref_image": coin(self.ref_image_drop),
            "drop_ref_voice": coin(self.ref_voice_drop),
        }
        if self.max_t_video is not None:
            draws["t_video"] = replace(self.flow, max_t=self.max_t_video).sample_timesteps(n, generator)
        if self.video_noise_share > 0:
            c, _, h, w = batch["video"].shape[1:]
            shared = torch.randn((n, c, 1, h, w), generator=generator)
            draws["noise_video"] = mixed_noise(draws["noise_video"], shared, self.video_noise_share)
        return {k: v[offset : offset + b] for k, v in draws.items()}

    @staticmethod
    def context(batch: dict) -> WindowContext:
        b = batch["video"].shape[0]
        return WindowContext(
            ref_video=batch["ref_image"],
            ref_voice=batch["ref_voice"],
            ref_voice_valid=batch["ref_voice_mask"],
            ref_image_valid=torch.ones(b, dtype=torch.bool, device=batch["video"].device),
            sink_video=batch["sink_video"],
            sink_audio=batch["sink_audio"],
            has_sink=batch["has_sink"],
            motion_video=batch["motion_video"],
            motion_audio=batch["motion_audio"],
            has_motion=batch["has_motion"],
        )

    def loss(
        self, model: JointDiT, batch: dict, draws: dict, priors=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the batch and per-window parts (``video``, ``audio``) for logging. ``priors``
        (:class:`~streamchar.denoiser.prior.Priors`) are required by a residual denoiser."""
        device = batch["video"].device
        draws = {k: v.to(device) for k, v in draws.items()}
        t, driven = draws["t"], draws["audio_driven"]
        batch = residual_batch(model, batch, priors, driven)
        x0_video, x0_audio = batch["video"], batch["audio"]
        t_audio = torch.where(driven, torch.zeros_like(t), t)
        t_video = draws.get("t_video", t)
        video_t = self.flow.interpolate(x0_video, draws["noise_video"], t_video)
        audio_t = self.flow.interpolate(x0_audio, draws["noise_audio"], t_audio)
        null_unit = getattr(model, "module", model).num_units  # DDP wraps the model
        conditions = Conditions.of(batch).dropped(draws["drop_cond"], null_unit)
        context = self.context(batch).with_dropped_references(
            draws["drop_ref_image"], draws["drop_ref_voice"]
        )
        v_video, v_audio = model(
            video_t, audio_t, (t_video, t_audio), conditions, context, batch["audio_mask"]
        )
        target_video = self.flow.velocity_target(x0_video, draws["noise_video"])
        target_audio = self.flow.velocity_target(x0_audio, draws["noise_audio"])
        if getattr(model, "module", model).video_prediction == "x0":  # the clean state's error, not v's
            video_err = (self.flow.predict_x0(video_t, v_video.float(), t_video) - x0_video).pow(2)
        else:
            video_err = (v_video.float() - target_video).pow(2)  # [B, C, L, h, w]
        if self.mouth_weight != 1.0 and "mouth_box" in batch:
            cells = mouth_weight_map(batch["mouth_box"], batch["has_mouth_box"], tuple(video_err.shape[-2:]),
                                     self.mouth_weight)  # fmt: skip
            video_err = weighted_video_error(video_err, cells)  # [B]
        else:
            video_err = video_err.flatten(1).mean(1)  # [B]
        mask = batch["audio_mask"].float()[..., None]  # [B, L_a, 1]
        audio_err = ((v_audio.float() - target_audio).pow(2) * mask).sum((1, 2)) / (
            mask.sum((1, 2)) * x0_audio.shape[-1]
        ).clamp_min(1)
        audio_err = torch.where(driven, torch.zeros_like(audio_err), audio_err)
        per_window = video_err + self.audio_loss_weight * audio_err
        return per_window.mean(), {
            "video": video_err.detach(),
            "audio": audio_err.detach(),
            "audio_driven": driven,
        }
