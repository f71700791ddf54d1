"""What both distillation stages share: the frozen teacher, the student and the fake score, their
optimisers, data-parallel setup under accelerate (DDP, or FSDP2 with ``distill.fsdp``), resumable
checkpoints, tensorboard and the exported student.

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
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from streamchar.config import StreamCharConfig, resolve_asset_path, to_dict
from streamchar.data.latents import LatentCache
from streamchar.denoiser.flow import Guidance
from streamchar.distill import DISTILLED
from streamchar.distill.objective import DistillObjective
from streamchar.loaders import load_priors
from streamchar.training import (
    check_finite_loss,
    cosine_lr,
    guard_run_config,
    read_optimizer_state,
    resolve_mixed_precision,
    resume_latest,
    save_checkpoint,
)
from streamchar.training.distributed import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    shard_module,
)
from streamchar.training.teacher import _gradient_sync, latent_spec_from_cache, load_teacher, trained_max_t

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
    )


class DistillRun:
    """The models, optimisers, process group, logging and checkpoints of one distillation run."""

    def __init__(
        self, cfg: StreamCharConfig, latents: str | Path, out: str | Path, stage: str, init: str | None = None
    ) -> None:
        from accelerate import Accelerator
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.dcfg, self.stage = cfg, cfg.distill, stage
        dcfg = self.dcfg
        if dcfg.student_steps < 1:
            raise ValueError(f"distill.student_steps must be at least 1, got {dcfg.student_steps}.")
        if dcfg.num_threads:
            torch.set_num_threads(dcfg.num_threads)
        self.out = Path(out)
        self.cache = LatentCache(latents)
        self.timeline = self.cache.window_timeline(cfg.timeline)
        self.spec = latent_spec_from_cache(self.cache)
        self.precision = resolve_mixed_precision(dcfg.mixed_precision)
        self.accelerator = acc = Accelerator(
            mixed_precision=self.precision, cpu=not torch.cuda.is_available()
        )
        self.rank, self.world = acc.process_index, acc.num_processes
        self.sharded = dcfg.fsdp and self.world > 1
        if acc.is_main_process:
            guard_run_config(self.out, "distill", {"stage": stage, **to_dict(dcfg), "init": init})
        acc.wait_for_everyone()

        self.teacher_path = str(resolve_asset_path(dcfg.teacher))
        teacher = load_teacher(self.teacher_path, cfg, self.spec).requires_grad_(False)
        self.teacher = teacher.to(acc.device)
        # a shallow teacher's students start where it does, and DMD re-noises only within the times it learnt
        max_t = trained_max_t(self.teacher_path) if teacher.residual else 1.0
        self.objective = replace(objective_from_config(dcfg), start=teacher.sample_start,
                                 t_max=min(dcfg.t_max, max_t))  # fmt: skip
        if self.objective.t_max < dcfg.t_max:
            logger.info("distill: DMD re-noises t in [%.2f, %.2f], the range the teacher was trained on",
                        self.objective.t_min, self.objective.t_max)  # fmt: skip
        # a residual teacher's students refine the same priors' means
        self.priors = load_priors(cfg, acc.device) if teacher.residual else None
        self.unit_context = self.priors.context if self.priors is not None else 0
        student = load_teacher(init, cfg, self.spec) if init else copy.deepcopy(teacher)
        fake = copy.deepcopy(teacher)
        student.requires_grad_(True).train()
        fake.requires_grad_(True).train()
        state = resume_latest(self.out, torch.nn.ModuleDict({"student": student, "fake": fake}))
        self.start = state["step"] if state else 0
        if self.sharded:
            for m in (student, fake):
                m.to(acc.device)
                shard_module(m, m.blocks)
        self.opt_student = torch.optim.AdamW(student.parameters(), lr=dcfg.lr_student,
                                             weight_decay=dcfg.weight_decay, betas=(0.0, 0.99))  # fmt: skip
        self.opt_fake = torch.optim.AdamW(fake.parameters(), lr=dcfg.lr_fake,
                                          weight_decay=dcfg.weight_decay, betas=(0.0, 0.99))  # fmt: skip
        if state is not None:
            for name, opt in (("optimizer", self.opt_student), ("optimizer-fake", self.opt_fake)):
                if (saved := read_optimizer_state(state["checkpoint"], name)) is not None:
                    load_full_optimizer_state(opt, saved)
        if not self.sharded:
            student, self.opt_student = acc.prepare(student, self.opt_student)
            fake, self.opt_fake = acc.prepare(fake, self.opt_fake)
        self.student, self.fake = student, fake
        self.writer = SummaryWriter(str(self.out / "logs")) if acc.is_main_process else None
        self._t = time.perf_counter()

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def device(self):
        return self.accelerator.device

    def generator(self, step: int) -> torch.Generator:
        """The step's random stream: the same on every process (each takes its slice of the draws)."""
        return torch.Generator().manual_seed(self.dcfg.seed * 1_000_003 + step)

    def lr(self, step: int, total: int, base: float) -> float:
        d = self.dcfg
        return cosine_lr(step, total, base, base * d.lr_min_fraction, min(d.warmup_steps, total // 4))

    def backward(self, model, loss: torch.Tensor, sync: bool = True) -> None:
        with _gradient_sync(model, sync):
            self.accelerator.backward(loss)

    def update(self, model, optimizer: torch.optim.Optimizer, lr: float) -> None:
        """Clip, step and clear one model's optimiser at learning rate ``lr``."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        if self.dcfg.grad_clip > 0:
            clip = torch.nn.utils.clip_grad_norm_ if self.sharded else self.accelerator.clip_grad_norm_
            clip(model.parameters(), self.dcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def check(self, loss: torch.Tensor, step: int) -> None:
        check_finite_loss(loss, step, "distill.lr_student")

    def log(self, step: int, values: dict[str, float], bar=None) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{self.stage}/{name}", value, step)
        rate = 1.0 / max(1e-9, time.perf_counter() - self._t)
        self._t = time.perf_counter()
        self.writer.add_scalar(f"{self.stage}/steps_per_second", rate, step)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items() if k != "lr"})

    # -- checkpoints --------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        acc = self.accelerator
        student = full_state_dict(acc.unwrap_model(self.student))
        fake = full_state_dict(acc.unwrap_model(self.fake))
        return {
            **{f"student.{k}": v for k, v in student.items()},
            **{f"fake.{k}": v for k, v in fake.items()},
        }

    def checkpoint(self, step: int, state: dict | None = None) -> None:
        weights = self._weights()  # collectives: every process gathers, the main one writes
        opt_s, opt_f = full_optimizer_state(self.opt_student), full_optimizer_state(self.opt_fake)
        if self.accelerator.is_main_process:
            save_checkpoint(self.out, step, weights, opt_s, state=state, extra_optimizers={"fake": opt_f})
        self.accelerator.wait_for_everyone()

    def export_student(self, step: int, extra: dict | None = None) -> Path | None:
        """Write ``RUN/student/``: the student's weights, the teacher's architecture record, and
        ``distilled.json`` (steps, shift, folded guidance, stage, step)."""
        weights = full_state_dict(self.accelerator.unwrap_model(self.student))
        folder = self.out / "student"
        if self.accelerator.is_main_process:
            tmp = self.out / ".student.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(weights, str(tmp / "model.safetensors"))
            teacher = Path(self.teacher_path)
            for record in (teacher / "denoiser.json", teacher.parent.parent / "denoiser.json"):
                if record.is_file():
                    shutil.copy(record, tmp / "denoiser.json")
                    break
            o = self.objective
            info = {
                "steps": o.steps, "shift": o.shift, "start": o.start,
                "folded_guidance": list(o.guidance.__dict__.values()),
                "stage": self.stage, "step": step, "teacher": self.teacher_path, **(extra or {}),
            }  # fmt: skip
            (tmp / DISTILLED).write_text(json.dumps(info, indent=1) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        self.accelerator.wait_for_everyone()
        return folder

    def finish(self, summary: dict) -> dict:
        summary = {**summary, "run": str(self.out), "precision": self.precision, "processes": self.world,
                   "strategy": "fsdp" if self.sharded else ("ddp" if self.world > 1 else "single")}  # fmt: skip
        if self.accelerator.is_main_process:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            self.writer.close()
        self.accelerator.wait_for_everyone()
        return summary

    # -- the loop's bookkeeping, shared by both stages -----------------------------------------------
    def progress_bar(self, total: int, desc: str, progress: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.start, desc=desc, unit="step",
                    disable=not (progress and self.accelerator.is_main_process))  # fmt: skip

    def step_done(self, done: int, last: dict[str, float], bar) -> None:
        """After optimiser step ``done``: progress, logs every ``log_every``, a checkpoint every ``ckpt_every``."""
        bar.update(1)
        if done % self.dcfg.log_every == 0:
            self.log(done, last, bar)
        if done % self.dcfg.ckpt_every == 0:
            self.checkpoint(done)

    def close(
        self, bar, stop: int, total: int, last: dict, summary: dict, export: dict | None = None
    ) -> dict:
        """Checkpoint where the loop stopped, export the student, write ``summary.json``; returns the summary."""
        bar.close()
        final = max(self.start, stop)
        if final > self.start and final % self.dcfg.ckpt_every:
            self.checkpoint(final)
        self.export_student(final, export)
        return self.finish({"stage": self.stage, "step": final, "total_steps": total, "finished": final >= total,
                            "student_steps": self.dcfg.student_steps, "last": last,
                            "student": str(self.out / "student"), **summary})  # fmt: skip
