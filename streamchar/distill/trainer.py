"""What both distillation stages share: the frozen teacher, the student and the fake score, their
optimisers and the exported student, on the training loop (:mod:`streamchar.training.loop`: accelerate
with DDP, or FSDP2 with ``distill.fsdp``, resumable checkpoints, tensorboard).

A run folder holds ``checkpoints/step-N`` (the student and the fake score as one state dict with
``student.`` / ``fake.`` prefixes, both optimisers, the step and RNG), ``logs/`` (tensorboard),
``distill.json`` (the settings it was started with; resuming with others is refused),
``summary.json``, and ``student/``: the exported student (``model.safetensors``, ``denoiser.json``,
``distilled.json`` with its steps and the guidance it folded in), which ``load_teacher`` and the
engine load like any denoiser checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from streamchar.checkpoints import CheckpointError
from streamchar.config import StreamCharConfig, resolve_asset_path, to_dict
from streamchar.data.latents import LatentCache
from streamchar.denoiser.flow import Guidance
from streamchar.distill.objective import DistillObjective
from streamchar.loaders import DISTILLED, load_priors, load_teacher, teacher_record
from streamchar.training import cosine_lr
from streamchar.training.distributed import full_state_dict
from streamchar.training.loop import LoopSpec, TrainingRun, TrainStep, run_loop
from streamchar.training.teacher import latent_spec_from_cache

logger = logging.getLogger(__name__)


def objective_from_config(dcfg) -> DistillObjective:
    return DistillObjective(
        steps=dcfg.student_steps,
        shift=dcfg.shift,
        guidance=Guidance(dcfg.guidance_conditions, dcfg.guidance_ref_image, dcfg.guidance_ref_voice),
        t_min=dcfg.t_min,
        t_max=dcfg.t_max,
        fake_updates=dcfg.fake_updates,
        audio_loss_weight=dcfg.audio_loss_weight,
        audio_score_tied=dcfg.audio_score_tied,
    )


def teacher_max_t(teacher, path: str) -> float:
    """The largest (audio) flow time a teacher was trained on: ``train.teacher.max_t`` for a residual teacher."""
    return float(teacher_record(path).get("max_t", 1.0)) if teacher.residual else 1.0


def check_audio_teacher(audio_teacher, teacher, path: str) -> None:
    """An audio teacher scores the same audio states as the teacher: the same formulation, residual scales and
    audio start."""
    same = (audio_teacher.residual, audio_teacher.residual_scales, audio_teacher.sample_start) == (
        teacher.residual, teacher.residual_scales, teacher.sample_start)  # fmt: skip
    if not same:
        raise CheckpointError(
            f"{path} cannot score the student's audio: its formulation, residual scales or audio start "
            f"({audio_teacher.residual}, {audio_teacher.residual_scales}, {audio_teacher.sample_start}) differ from "
            f"the teacher's ({teacher.residual}, {teacher.residual_scales}, {teacher.sample_start}); pick a teacher "
            "trained with the same denoiser settings or leave distill.audio_teacher unset."
        )


def objective_for_teacher(objective: DistillObjective, teacher, path: str, student=None) -> DistillObjective:
    """The students' sampler and DMD re-noising where the teacher's were trained: a shallow residual teacher's
    students start where it does and are re-noised only within the times it learnt (``train.teacher.max_t``); a
    teacher whose video has its own start (``denoiser.sample_start_video``, trained to
    ``train.teacher.max_t_video``) gets a student with the same two starts, the video re-noised within its own
    range, and video noise with the share of it the teacher's frames had in common. A ``student`` that starts
    from another model (``distill.init``: a student of another teacher) keeps its own starts; the re-noising
    still follows the teacher."""
    record = teacher_record(path) if teacher.residual else {}
    max_t = float(record.get("max_t", 1.0))  # what teacher_max_t reads, from the record already read
    starts = teacher if student is None else student
    out = replace(objective, start=starts.sample_start, t_max=min(objective.t_max, max_t),
                  video_noise_share=float(record.get("video_noise_share") or 0.0))  # fmt: skip
    if teacher.sample_start_video != teacher.sample_start:
        out = replace(out, t_max_video=min(objective.t_max, float(record.get("max_t_video") or max_t)))
    if starts.sample_start_video != starts.sample_start:
        out = replace(out, start_video=starts.sample_start_video)
    return out


def check_student_state(student, teacher, path: str) -> None:
    """A student started from another model refines the same states as the teacher scores: the same formulation
    and residual scales."""
    if (student.residual, student.residual_scales) != (teacher.residual, teacher.residual_scales):
        raise CheckpointError(
            f"{path} refines other states than the teacher scores (formulation, residual scales "
            f"{student.residual}, {student.residual_scales} against {teacher.residual}, {teacher.residual_scales}); "
            "start from a student of a teacher trained with the same denoiser settings (distill.init)."
        )


class DistillRun(TrainingRun):
    """One distillation stage on the training loop: the student (``models["student"]``, its optimiser saved
    as ``optimizer``) and the fake score (``models["fake"]``, ``optimizer-fake``) beside the frozen teacher."""

    def __init__(self, cfg: StreamCharConfig, latents: str | Path, out: str | Path, stage: str, total: int,
                 desc: str, init: str | None = None, progress: bool = True) -> None:  # fmt: skip
        self.cfg, self.dcfg, self.stage = cfg, cfg.distill, stage
        dcfg = self.dcfg
        if dcfg.student_steps < 1:
            raise ValueError(f"distill.student_steps must be at least 1, got {dcfg.student_steps}.")
        self.cache = LatentCache(latents)
        self.timeline = self.cache.window_timeline(cfg.timeline)
        self.latent_spec = latent_spec_from_cache(self.cache)
        record = {"stage": stage, **to_dict(dcfg), "init": init}
        super().__init__(LoopSpec(stage, "distill.lr_student", dcfg, Path(out), record, record_name="distill",
                                  steps=total, desc=desc, shared_draws=True, sharded=dcfg.fsdp, log_prefix=stage),
                         progress)  # fmt: skip

        self.teacher_path = str(resolve_asset_path(dcfg.teacher))
        teacher = load_teacher(self.teacher_path, cfg, self.latent_spec).requires_grad_(False)
        self.teacher = teacher.to(self.device)
        self.init_path = init
        student = load_teacher(init, cfg, self.latent_spec) if init else copy.deepcopy(teacher)
        if init:
            check_student_state(student, teacher, init)
        self.objective = objective_for_teacher(
            objective_from_config(dcfg), teacher, self.teacher_path, student
        )
        self.audio_teacher = None
        if dcfg.audio_teacher:
            path = str(resolve_asset_path(dcfg.audio_teacher))
            audio_teacher = load_teacher(path, cfg, self.latent_spec).requires_grad_(False)
            check_audio_teacher(audio_teacher, teacher, path)
            self.audio_teacher = audio_teacher.to(self.device)
            self.objective = replace(
                self.objective, t_max=min(self.objective.t_max, teacher_max_t(audio_teacher, path))
            )
            logger.info("distill: the audio's real score from %s", path)
        o = self.objective
        if o.t_max < dcfg.t_max:
            logger.info("distill: DMD re-noises t in [%.2f, %.2f], the range the teacher was trained on",
                        o.t_min, o.t_max)  # fmt: skip
        if o.t_max_video is not None or o.video_noise_share:
            logger.info("distill: the video starts at %.2f (re-noised up to %.2f, noise share %.2f), the audio at %.2f",
                        o.video_start, o.t_max_video or o.t_max, o.video_noise_share, o.start)  # fmt: skip
        # a residual teacher's students refine the same priors' means
        self.priors = load_priors(cfg, self.device) if teacher.residual else None
        self.unit_context = self.priors.context if self.priors is not None else 0
        fake = copy.deepcopy(teacher)
        student.requires_grad_(True)
        fake.requires_grad_(True)
        adamw = {"weight_decay": dcfg.weight_decay, "betas": (0.0, 0.99)}
        self.setup({"student": student, "fake": fake},
                   {"student": {"lr": dcfg.lr_student, **adamw}, "fake": {"lr": dcfg.lr_fake, **adamw}})  # fmt: skip

    @property
    def student(self) -> torch.nn.Module:
        return self.models["student"]

    @property
    def fake(self) -> torch.nn.Module:
        return self.models["fake"]

    def lr_at(self, step: int, total: int, base: float) -> float:
        """A phase's learning rate: warm-up (at most a quarter of the phase), then cosine decay to
        ``base * lr_min_fraction`` at ``total``."""
        d = self.dcfg
        return cosine_lr(step, total, base, base * d.lr_min_fraction, min(d.warmup_steps, total // 4))

    def train(self, train_step: TrainStep, max_steps: int | None, summary: dict | None = None,
              export: dict | None = None) -> dict:  # fmt: skip
        """Run the stage's steps (or ``max_steps`` more), export the student (``export``: more for its
        ``distilled.json``) and write ``summary.json`` (``summary``: more for it); returns the summary."""

        def finish(run: TrainingRun, loop_summary: dict) -> dict:
            final = loop_summary["step"]
            self.export_student(final, export)
            return {"stage": self.stage, "step": final, "total_steps": self.total, "finished": final >= self.total,
                    "student_steps": self.dcfg.student_steps, "last": self.last,
                    "student": str(self.out / "student"), **(summary or {}), "run": str(self.out),
                    "precision": self.precision, "processes": self.world, "strategy": self.strategy}  # fmt: skip

        self.spec.finish = finish
        return run_loop(self, train_step, None, max_steps)

    def export_student(self, step: int, extra: dict | None = None) -> Path | None:
        """Write ``RUN/student/``: the student's weights, the architecture record of the model it started from,
        and
        ``distilled.json`` (steps, shift, folded guidance, stage, step)."""
        weights = full_state_dict(self.accelerator.unwrap_model(self.student))
        folder = self.out / "student"
        if self.accelerator.is_main_process:
            tmp = self.out / ".student.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(weights, str(tmp / "model.safetensors"))
            source = Path(resolve_asset_path(self.init_path) if self.init_path else self.teacher_path)
            for record in (source / "denoiser.json", source.parent.parent / "denoiser.json"):
                if record.is_file():
                    shutil.copy(record, tmp / "denoiser.json")
                    break
            o = self.objective
            info = {
                "steps": o.steps, "shift": o.shift, "start": o.start,
                **({"start_video": o.start_video} if o.start_video is not None else {}),
                **({"video_noise_share": o.video_noise_share} if o.video_noise_share else {}),
                "folded_guidance": list(o.guidance.__dict__.values()),
                "stage": self.stage, "step": step, "teacher": self.teacher_path, **(extra or {}),
            }  # fmt: skip
            (tmp / DISTILLED).write_text(json.dumps(info, indent=1) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        self.accelerator.wait_for_everyone()
        return folder
