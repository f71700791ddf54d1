"""``streamchar distill stage1``: sampler compression on single windows.

1. **Pairs**: the frozen teacher solves the guided ODE from fixed noise for ``distill.pairs`` training
   windows (:mod:`streamchar.distill.pairs`; resumable shards).
2. **Regression** (``distill.regression_steps``): the student, initialised as the teacher, learns to
   map the teacher's trajectory state at each of its own grid times straight to the teacher's final
   sample, with full conditions and one model call: guidance is folded in.
3. **DMD** (``distill.dmd_steps``): the student samples windows in ``distill.student_steps`` steps
   (the gradient flows through one randomly chosen step, the ones before run without a graph);
   the DMD loss pulls the samples towards the guided teacher's distribution, and the fake score
   learns the student's distribution by flow matching on them (``distill.fake_updates`` per step).

Data and randomness are functions of (seed, step, process), as in the teacher trainer, so a killed
run resumes exactly and a two-process run takes the steps of one process with both halves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig
from streamchar.data.windows import WindowDataset
from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.objective import TeacherObjective
from streamchar.denoiser.residual import residual_batch
from streamchar.distill.pairs import PairSet, PairSpec, generate_pairs
from streamchar.distill.trainer import DistillRun
from streamchar.training.loop import collate, to_device

logger = logging.getLogger(__name__)


def pair_spec_from_config(dcfg, start: float = 1.0, start_video: float | None = None,
                          video_noise_share: float = 0.0) -> PairSpec:  # fmt: skip
    """The pairs of a ``distill`` section, for a teacher sampled from ``start`` (its ``sample_start``; its video
    from ``start_video`` with ``video_noise_share``, as its objective has them)."""
    return PairSpec(
        count=dcfg.pairs,
        teacher_steps=dcfg.pair_teacher_steps,
        record_steps=dcfg.pair_record_steps,
        shift=dcfg.shift,
        guidance=(dcfg.guidance_conditions, dcfg.guidance_ref_image, dcfg.guidance_ref_voice),
        seed=dcfg.seed + 101,
        start=start,
        start_video=start_video,
        video_noise_share=video_noise_share,
    )


def regression_batch(pairs: PairSet, steps: int, indices: list[int], ks: list[int], device, model=None,
                     priors=None):  # fmt: skip
    """Collated windows, states, targets and times of the given pairs at student steps ``ks`` (a residual
    ``model``'s windows carry the ``priors``' means)."""
    items = [pairs.item(i, steps, k) for i, k in zip(indices, ks, strict=True)]
    batch = to_device(collate([w for w, _, _, _ in items]), device)
    if model is not None:
        batch = residual_batch(model, batch, priors)
    states = tuple(torch.stack([s[m] for _, s, _, _ in items]).to(device) for m in (0, 1))
    targets = tuple(torch.stack([x[m] for _, _, x, _ in items]).to(device) for m in (0, 1))
    t = tuple(torch.tensor([t[m] for _, _, _, t in items], device=device) for m in (0, 1))
    return batch, states, targets, t


def distill_stage1(
    cfg: StreamCharConfig,
    latents: str | Path,
    out: str | Path,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) stage 1; returns a summary and leaves the student in ``OUT/student``."""
    dcfg = cfg.distill
    pair_spec_from_config(dcfg).check(dcfg.student_steps)
    total = dcfg.regression_steps + dcfg.dmd_steps
    run = DistillRun(cfg, latents, out, "stage1", total, f"distill stage 1 ({dcfg.student_steps}-step)",
                     progress=progress)  # fmt: skip
    obj = run.objective
    spec = pair_spec_from_config(dcfg, obj.start, obj.start_video, obj.video_noise_share)
    acc, b = run.accelerator, dcfg.batch_size
    pairs_dir = Path(dcfg.pairs_dir) if dcfg.pairs_dir else run.out / "pairs"
    if run.start < dcfg.regression_steps:
        generate_pairs(run.teacher, run.cache, run.timeline, spec, pairs_dir, run.device, acc.autocast,
                       run.rank, run.world, progress, run.priors)  # fmt: skip
        acc.wait_for_everyone()
        pairs = PairSet(pairs_dir, run.cache, run.timeline, spec, run.unit_context)
    windows = WindowDataset(run.cache, "train", length=2**31 - 1, seed=dcfg.seed + 3,
                            first_chunk_prob=0.1, timeline=run.timeline, unit_context=run.unit_context)  # fmt: skip

    def train_step(step: int, g: torch.Generator):
        first = (step * run.world + run.rank) * b
        if step < dcfg.regression_steps:
            ks = torch.randint(0, dcfg.student_steps, (b * run.world,), generator=g)[
                run.rank * b : (run.rank + 1) * b
            ]
            indices = [(first + i) % len(pairs) for i in range(b)]
            batch, states, targets, t = regression_batch(
                pairs, dcfg.student_steps, indices, ks.tolist(), run.device, run.teacher, run.priors
            )
            with acc.autocast():
                loss, parts = obj.regression(run.student, batch, states, t, targets)
            run.backward(loss, "student")
            run.update("student", run.lr_at(step, dcfg.regression_steps, dcfg.lr_regression))
            return loss, {"regression": loss.item()}
        batch = to_device(collate([windows[first + i] for i in range(b)]), run.device)
        batch = residual_batch(run.teacher, batch, run.priors)
        draws = {k: v.to(run.device) for k, v in
                 obj.draw(batch, g, total=b * run.world, offset=run.rank * b).items()}  # fmt: skip
        conditions, context = Conditions.of(batch), TeacherObjective.context(batch)
        with acc.autocast():
            x0 = obj.student_x0(run.student, (draws["noise_video"], draws["noise_audio"]), conditions, context,
                                batch["audio_mask"], int(draws["exit"]))  # fmt: skip
            loss, parts = obj.dmd(x0, run.teacher, run.fake, batch, draws, audio_teacher=run.audio_teacher)
        run.backward(loss, "student")
        run.update("student", run.lr_at(step - dcfg.regression_steps, dcfg.dmd_steps, dcfg.lr_student))
        samples = (x0[0].detach(), x0[1].detach())
        for u in range(dcfg.fake_updates):
            with acc.autocast():
                fake_loss, _ = obj.fake_score(run.fake, samples, batch, draws, u)
            run.backward(fake_loss, "fake")
            run.update("fake", run.lr_at(step - dcfg.regression_steps, dcfg.dmd_steps, dcfg.lr_fake))
        return loss, {"dmd": loss.item(), "fake_flow": fake_loss.item()}

    return run.train(train_step, max_steps)
