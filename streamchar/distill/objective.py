"""The distillation objective over training windows of the joint DiT (both stages use it).

As for the teacher (:mod:`streamchar.denoiser.objective`), every random number of a step is drawn
first, for the global batch, and each process takes its slice; the losses are pure functions of the
batch, the models and the draws. So two processes with half the batch each take the same step as one
process with all of it.

The student is an Euler sampler on ``sampling_grid(steps, shift, start)`` with guidance folded in: one
model call per step, full conditions, no guidance branches. Everything here runs in the denoiser's state
space: for a residual denoiser the batches come prepared by :func:`~streamchar.denoiser.residual.residual_batch`
(states around the priors' means, which ride along in the conditions). Its output at step ``k`` is the clean
prediction ``x0 = x_{t_k} - t_k v``; the final step's Euler update lands exactly on it. A shallow student
(``start < 1``, the teacher's ``sample_start``) starts from noise scaled by ``start``, as
:class:`~streamchar.denoiser.flow.EulerSampler` does. A teacher with two starts (its video made from noise,
``denoiser.sample_start_video``) has students with the same two: each modality on its own grid of as many steps,
DMD re-noising each within the times the teacher learnt for it, the video noise shared by a window's frames as
the teacher's was (``train.teacher.video_noise_share``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext
from streamchar.denoiser.flow import FlowMatching, Guidance, guided_velocity, sampling_grid, video_noise
from streamchar.denoiser.objective import TeacherObjective
from streamchar.distill.losses import dmd_loss, flow_matching_loss, ode_regression_loss

Latents = tuple[torch.Tensor, torch.Tensor]  # (video [B, C, L, h, w], audio [B, L_a, D_a])


def _unwrap(model):
    return getattr(model, "module", model)  # DDP


@dataclass(frozen=True)
class DistillObjective:
    steps: int = 2  # the student's denoising steps
    shift: float = 1.0  # the student's sampling grid (and the teacher's ODE grid)
    guidance: Guidance = Guidance(2.0, 1.5, 1.5)  # the real score's guidance, folded into the student
    t_min: float = 0.02  # DMD re-noising range
    t_max: float = 0.98
    fake_updates: int = 1  # fake-score updates per student update
    audio_loss_weight: float = 1.0
    start: float = 1.0  # where the student's sampling starts (the teacher's sample_start)
    # a teacher with two starts (denoiser.sample_start_video, trained with train.teacher.max_t_video): where the
    # video's sampling starts, the video's own DMD re-noising bound, and the share of a window's video noise its
    # frames have in common (train.teacher.video_noise_share); None: the audio's
    start_video: float | None = None
    t_max_video: float | None = None
    video_noise_share: float = 0.0
    # score the audio (real and fake) with the video re-noised at the audio's time, as a one-start teacher saw it
    # in training, instead of at the video's own draw (a video near pure noise tells the audio nothing)
    audio_score_tied: bool = False

    @property
    def grid(self) -> list[float]:
        return sampling_grid(self.steps, self.shift, self.start).tolist()

    @property
    def video_start(self) -> float:
        return self.start if self.start_video is None else self.start_video

    @property
    def grid_video(self) -> list[float]:
        """The video's grid: ``grid``, or with its own start as many steps from there."""
        return sampling_grid(self.steps, self.shift, self.video_start).tolist()

    # -- randomness ---------------------------------------------------------------------------------
    def draw(
        self, batch: dict, generator: torch.Generator, total: int | None = None, offset: int = 0
    ) -> dict[str, torch.Tensor]:
        """Every random number one student update (and its fake-score updates) needs.

        ``exit`` (one per step, shared by the batch): the student step whose clean prediction carries the
        gradient (backward simulation: the steps before it run without a graph). With ``t_max_video`` the video
        is re-noised at times of its own (``t_video``, ``fake_t_video<i>``, drawn after the rest, so the draws of
        one start are unchanged); video noise is :func:`~streamchar.denoiser.flow.video_noise` with
        ``video_noise_share``.
        """
        b = batch["video"].shape[0]
        n = b if total is None else total
        shape_v, shape_a = batch["video"].shape[1:], batch["audio"].shape[1:]

        def t(t_max: float) -> torch.Tensor:
            return self.t_min + (t_max - self.t_min) * torch.rand(n, generator=generator)

        def noise_v() -> torch.Tensor:
            return video_noise((n, *shape_v), generator, self.video_noise_share)

        draws = {
            "noise_video": noise_v(),
            "noise_audio": torch.randn((n, *shape_a), generator=generator),
            "t": t(self.t_max),
            "renoise_video": noise_v(),
            "renoise_audio": torch.randn((n, *shape_a), generator=generator),
        }
        for i in range(self.fake_updates):
            draws[f"fake_t{i}"] = t(self.t_max)
            draws[f"fake_video{i}"] = noise_v()
            draws[f"fake_audio{i}"] = torch.randn((n, *shape_a), generator=generator)
        if self.t_max_video is not None:
            draws["t_video"] = t(self.t_max_video)
            for i in range(self.fake_updates):
                draws[f"fake_t_video{i}"] = t(self.t_max_video)
        out = {k: v[offset : offset + b] for k, v in draws.items()}
        out["exit"] = torch.randint(0, self.steps, (1,), generator=generator)
        return out

    # -- the student -------------------------------------------------------------------------------
    def student_x0(
        self,
        student: JointDiT,
        noise: Latents,
        conditions: Conditions,
        context: WindowContext,
        audio_mask: torch.Tensor,
        exit_step: int | None = None,
    ) -> Latents:
        """Run the student from ``noise`` to step ``exit_step`` (default: the last) without a graph, then
        predict the clean latents from there with one (the step the gradient flows through)."""
        exit_step = self.steps - 1 if exit_step is None else exit_step
        grid, grid_v = self.grid, self.grid_video
        video, audio = self.video_start * noise[0], self.start * noise[1]
        plain = _unwrap(student)

        def times(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.full((video.shape[0],), grid[k], device=video.device)
            return torch.full_like(t, grid_v[k]), t

        with torch.no_grad():
            for k in range(exit_step):
                v_video, v_audio = plain(video, audio, times(k), conditions, context, audio_mask)
                video = video + (grid_v[k + 1] - grid_v[k]) * v_video.float()
                audio = audio + (grid[k + 1] - grid[k]) * v_audio.float()
        v_video, v_audio = student(video, audio, times(exit_step), conditions, context, audio_mask)
        return video - grid_v[exit_step] * v_video.float(), audio - grid[exit_step] * v_audio.float()

    def _masks(self, batch: dict) -> torch.Tensor:
        return batch["audio_mask"].float()[..., None]  # [B, L_a, 1]

    def _combine(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return video + self.audio_loss_weight * audio

    # -- losses -------------------------------------------------------------------------------------
    def regression(
        self, student: JointDiT, batch: dict, states: Latents, t: tuple[torch.Tensor, torch.Tensor],
        targets: Latents,
    ) -> tuple[torch.Tensor, dict]:  # fmt: skip
        """ODE-pair regression: from the teacher's trajectory state at student times ``t`` (``(video [B], audio
        [B])``), the student's clean prediction against the teacher's final sample. Returns ``(mean loss, parts)``."""
        conditions, context = Conditions.of(batch), TeacherObjective.context(batch)
        v_video, v_audio = student(states[0], states[1], t, conditions, context, batch["audio_mask"])
        flow = FlowMatching()
        video = ode_regression_loss(flow.predict_x0(states[0], v_video.float(), t[0]), targets[0])
        audio = ode_regression_loss(
            flow.predict_x0(states[1], v_audio.float(), t[1]), targets[1], self._masks(batch)
        )
        return self._combine(video, audio).mean(), {"video": video.detach(), "audio": audio.detach()}

    @staticmethod
    def _renoise(x0: Latents, t: tuple[torch.Tensor, torch.Tensor], noise: Latents) -> Latents:
        flow = FlowMatching()
        return flow.interpolate(x0[0].detach(), noise[0], t[0]), flow.interpolate(
            x0[1].detach(), noise[1], t[1]
        )

    def dmd(
        self,
        x0: Latents,
        teacher: JointDiT,
        fake: JointDiT,
        batch: dict,
        draws: dict,
        context: WindowContext | None = None,
        audio_teacher: JointDiT | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """The DMD loss of student samples ``x0`` (with a graph); ``context`` defaults to the batch's. With
        ``audio_teacher`` the audio's real score is that teacher's, both modalities re-noised at the audio's time
        (the times it was trained on); with ``audio_score_tied`` the audio's real and fake scores both read the
        video re-noised at the audio's time. Returns ``(mean loss, parts)``."""
        conditions = Conditions.of(batch)
        context = context if context is not None else TeacherObjective.context(batch)
        mask = batch["audio_mask"]
        t = draws.get("t_video", draws["t"]), draws["t"]
        video_t, audio_t = self._renoise(x0, t, (draws["renoise_video"], draws["renoise_audio"]))
        flow = FlowMatching()
        with torch.no_grad():
            real_v, real_a = guided_velocity(
                teacher, self.guidance, video_t, audio_t, t, conditions, context, mask
            )
            fake_v, fake_a = _unwrap(fake)(video_t, audio_t, t, conditions, context, mask)
            if audio_teacher is not None or self.audio_score_tied:
                video_ta = flow.interpolate(x0[0].detach(), draws["renoise_video"], t[1])
                scorer = audio_teacher if audio_teacher is not None else teacher
                _, real_a = guided_velocity(
                    scorer, self.guidance, video_ta, audio_t, (t[1], t[1]), conditions, context, mask
                )
                if self.audio_score_tied:
                    _, fake_a = _unwrap(fake)(video_ta, audio_t, (t[1], t[1]), conditions, context, mask)
            real = (
                flow.predict_x0(video_t, real_v.float(), t[0]),
                flow.predict_x0(audio_t, real_a.float(), t[1]),
            )
            fake_x0 = (
                flow.predict_x0(video_t, fake_v.float(), t[0]),
                flow.predict_x0(audio_t, fake_a.float(), t[1]),
            )
        video = dmd_loss(x0[0], real[0], fake_x0[0])
        audio = dmd_loss(x0[1], real[1], fake_x0[1], self._masks(batch))
        return self._combine(video, audio).mean(), {"video": video.detach(), "audio": audio.detach()}

    def fake_score(
        self,
        fake: JointDiT,
        x0: Latents,
        batch: dict,
        draws: dict,
        update: int,
        context: WindowContext | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """The fake score's flow-matching loss on the detached student samples ``x0`` (update ``update``)."""
        conditions = Conditions.of(batch)
        context = context if context is not None else TeacherObjective.context(batch)
        t = draws.get(f"fake_t_video{update}", draws[f"fake_t{update}"]), draws[f"fake_t{update}"]
        noise = draws[f"fake_video{update}"], draws[f"fake_audio{update}"]
        video_t, audio_t = self._renoise(x0, t, noise)
        v_video, v_audio = fake(video_t, audio_t, t, conditions, context, batch["audio_mask"])
        video = flow_matching_loss(v_video, x0[0], noise[0])
        audio = flow_matching_loss(v_audio, x0[1], noise[1], self._masks(batch))
        return self._combine(video, audio).mean(), {"video": video.detach(), "audio": audio.detach()}
