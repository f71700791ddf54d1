"""``streamchar distill stage2``: fine-tuning under online chunk rollouts (self forcing).

Each training item is a session of ``distill.rollout_chunks`` consecutive chunks of a clip. The
student (initialised from the stage-1 student, ``distill.init``) generates them one after another as
it will at inference: chunk 0 from the references alone, every later chunk with its own first chunk
as the sink and the end of its own previous chunk as the motion frames. Each chunk's steps run
without a graph except the last, and each rolled-out chunk is trained with DMD against the teacher
evaluated in the same (student-made) context; the context itself is detached, so gradients flow
through the last denoising step of each chunk only. The fake score learns the distribution of the
rolled-out chunks. Each chunk's loss is backpropagated as soon as it is computed, so memory does not
grow with the rollout length. A residual student refines the priors' means, computed for each chunk as the
engine does: from the units so far and the last latent and audio the rollout itself made.

Each chunk's conditions are the clip's own frame-aligned units and speaking flags
(``distill.rollout_conditions=corpus``), or, with ``orchestrator``, what the orchestrator plans from the
clip's transcript chunk by chunk, as in a live session; after every chunk its progress-aware pointer is
re-aligned to the audio the student generated so far (a frame phoneme probe trained on the corpus's
ground-truth speech reads it), so the partial transcript stays aligned with the speech actually made.

DMD matches the teacher's distribution, and the teacher is no more intelligible than the acoustic prior it
refines. ``distill.phoneme_weight`` adds what the distribution match does not ask for: each chunk's speech
(the clean latents the student's sample stands for) should read as the chunk's phonemes to a frame probe
fitted on the cache's ground-truth speech (:func:`~streamchar.distill.losses.frame_phoneme_loss`).

``distill.video_mean_weight`` adds a regression on real data (as DMD's paired regression does): the mean over
each rolled-out chunk's frames of the student's video sample against the ground truth chunk's, in the same
residual state, over the cells whose correction the engine plays. Measured on development clips it changed
nothing the protocols see (docs/results/formulations.md, "What the video correction is: its start noise").

The engine can play only the timbre of a residual student's audio correction (``engine.audio_correction=
timbre``). ``distill.audio_correction=timbre`` trains what it plays: the student's audio sample is replaced by
its timbre (:func:`~streamchar.denoiser.residual.timbre_of`) before the distribution match, the fake score and
the rollout see it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from streamchar.checkpoints import CheckpointError
from streamchar.config import StreamCharConfig, resolve_asset_path
from streamchar.data.windows import RolloutDataset
from streamchar.denoiser.dit import Conditions, WindowContext
from streamchar.denoiser.residual import (
    audio_correction_bins,
    scales_of,
    timbre_of,
    to_latents,
    video_correction_mask,
)
from streamchar.distill.losses import chunk_mean_loss, frame_phoneme_loss, timbre_loss
from streamchar.distill.trainer import DistillRun
from streamchar.training.loop import collate, to_device

logger = logging.getLogger(__name__)


def chunk_batch(batch: dict, r: int) -> dict:
    """The batch of chunk ``r`` of every rollout: its conditions and audio mask, latent shapes for draws."""
    return {
        **batch,
        "units": batch["chunk_units"][:, r],
        "speaking": batch["chunk_speaking"][:, r],
        "audio_mask": batch["chunk_audio_mask"][:, r],
    }


def rollout_context(batch: dict, chunks: list[tuple[torch.Tensor, torch.Tensor]], tl, use_sink: bool = True):
    """The window context of the next chunk, from the (detached) chunks generated so far."""
    b = batch["video"].shape[0]
    device = batch["video"].device
    has = torch.full((b,), bool(chunks), device=device)
    if chunks:
        sink_video, sink_audio = (
            chunks[0][0][:, :, : tl.sink_latent_frames],
            chunks[0][1][:, : tl.sink_audio_tokens],
        )
        motion_video = chunks[-1][0][:, :, -tl.motion_latent_frames :]
        motion_audio = chunks[-1][1][:, -tl.motion_audio_tokens :]
    else:
        sink_video, sink_audio = batch["sink_video"], batch["sink_audio"]
        motion_video, motion_audio = batch["motion_video"], batch["motion_audio"]
    return WindowContext(
        ref_video=batch["ref_image"], ref_voice=batch["ref_voice"], ref_voice_valid=batch["ref_voice_mask"],
        ref_image_valid=torch.ones(b, dtype=torch.bool, device=device),
        sink_video=sink_video.detach(), sink_audio=sink_audio.detach(), has_sink=has & use_sink,
        motion_video=motion_video.detach(), motion_audio=motion_audio.detach(), has_motion=has,
    )  # fmt: skip


class PhonemeTarget:
    """The frame phoneme loss of stage 2: a probe fitted on the cache's ground-truth speech, and each chunk's
    phonemes from its units (``unit = phoneme x buckets + bucket``)."""

    def __init__(self, cache, device) -> None:
        from streamchar.orchestrator.phoneme_probe import fit_phoneme_probe

        self.probe, self.scores = fit_phoneme_probe(cache)
        self.probe.to(device)
        self.unit_size = cache.f0_buckets().size
        logger.info("phoneme loss probe: %s", self.scores)

    def loss(self, model, x0_audio: torch.Tensor, cb: dict) -> torch.Tensor:
        """Per item ``[B]``: the chunk's phonemes under the probe's reading of the student's clean latents."""
        scales = scales_of(model)
        audio = x0_audio if scales is None else cb["prior_audio"] + scales[1] * x0_audio
        units = cb["units"]
        mask = cb["audio_mask"].bool() & (units >= 0)
        return frame_phoneme_loss(self.probe(audio), units.clamp_min(0) // self.unit_size, mask)


class VideoMeanTarget:
    """The chunk-mean video regression of stage 2 (``distill.video_mean_weight``): the student's video sample,
    averaged over the chunk's frames, against the ground truth chunk's in the same state (``(x0 - mu) / s`` for a
    residual student), over the cells whose correction the engine plays (``engine.video_correction``)."""

    def __init__(self, cfg: StreamCharConfig, model) -> None:
        size = (model.latent_size, model.latent_size)
        self.cells = video_correction_mask(
            cfg.engine.video_correction, cfg.engine.mouth_box, size, cfg.engine.video_correction_margin
        )
        scales = scales_of(model)
        self.scale = None if scales is None else scales[0]

    def loss(self, x0_video: torch.Tensor, cb: dict, r: int) -> torch.Tensor:
        """Per item ``[B]`` for rolled-out chunk ``r``."""
        truth = cb["chunk_video"][:, r].to(x0_video.device)
        target = truth if self.scale is None else (truth - cb["prior_video"]) / self.scale
        cells = None if self.cells is None else self.cells.to(x0_video.device)
        return chunk_mean_loss(x0_video, target, cells)


class AudioTimbreTarget:
    """The timbre regression of stage 2 (``distill.audio_timbre_weight``): the timbre of the student's audio sample
    (its mean over the chunk's speech frames per frequency bin) against the ground truth chunk's, in the same
    residual state (``(x0 - mu) / s`` for a residual student)."""

    def __init__(self, cfg: StreamCharConfig, model) -> None:
        from streamchar.codecs.audio import build_audio_codec

        self.bins = audio_correction_bins("timbre", build_audio_codec(cfg, cfg.timeline))
        scales = scales_of(model)
        self.scale = None if scales is None else scales[1]

    def loss(self, x0_audio: torch.Tensor, cb: dict, r: int) -> torch.Tensor:
        """Per item ``[B]`` for rolled-out chunk ``r``."""
        truth = cb["chunk_audio"][:, r].to(x0_audio.device)
        target = truth if self.scale is None else (truth - cb["prior_audio"]) / self.scale
        speech = cb["audio_mask"].bool() & (cb["speaking"] > 0)
        return timbre_loss(x0_audio, target, speech, self.bins)


def rollout_means(priors, cb: dict, chunks: list[tuple[torch.Tensor, torch.Tensor]],
                  history: list[tuple[torch.Tensor, torch.Tensor]], tl) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The priors' means ``(video, audio)`` of the next rolled-out chunk, as the engine computes them: the
    acoustic prior over the units of the chunks so far (``history``) and this one, the video prior from the
    last latent and audio the rollout made (``chunks``, clean latents)."""
    b, context = cb["units"].shape[0], priors.context
    units = [torch.full((b, context), -1, dtype=torch.long, device=cb["units"].device)]
    speaking = [torch.zeros(b, context, dtype=torch.long, device=cb["units"].device)]
    units += [u for u, _ in history] + [cb["units"]]
    speaking += [s for _, s in history] + [cb["speaking"]]
    window = context + cb["units"].shape[1]
    units, speaking = torch.cat(units, 1)[:, -window:], torch.cat(speaking, 1)[:, -window:]
    mu_audio = priors.audio_means(units, speaking, cb["ref_voice"], cb["ref_voice_mask"])
    reference = cb["ref_image"][:, :, 0]
    if chunks:
        last, motion_audio = chunks[-1][0][:, :, -1], chunks[-1][1][:, -tl.motion_audio_tokens :]
    else:
        last = reference
        motion_audio = torch.zeros(b, tl.motion_audio_tokens, mu_audio.shape[-1], device=mu_audio.device)
    return priors.video_means(reference, last, motion_audio, mu_audio), mu_audio


class PlannedConditions:
    """Per rollout, an orchestrator speaking the clip's transcript, re-aligned to the generated audio."""

    def __init__(self, cfg: StreamCharConfig, cache) -> None:
        from streamchar.loaders import load_unit_lm, orchestrator_folder
        from streamchar.orchestrator.phoneme_probe import fit_phoneme_probe

        self.cfg, self.cache = cfg, cache
        self.lm, self.vocab, _ = load_unit_lm(orchestrator_folder(cfg), device="cpu")
        reader = resolve_asset_path(cfg.distill.phoneme_reader) if cfg.distill.phoneme_reader else None
        if reader is not None and (reader / "model.safetensors").is_file():
            from streamchar.codecs.audio import build_audio_codec
            from streamchar.loaders import load_phoneme_recognizer
            from streamchar.orchestrator.reader import LatentPhonemeReader

            recognizer = load_phoneme_recognizer(reader)
            self.probe = LatentPhonemeReader(recognizer, build_audio_codec(cfg, cfg.timeline))
            self.probe_scores = {"recognizer": str(reader), **recognizer.scores}
        else:
            logger.warning("no recognizer at distill.phoneme_reader=%s; fitting a frame probe on the latent cache",
                           cfg.distill.phoneme_reader)  # fmt: skip
            self.probe, self.probe_scores = fit_phoneme_probe(
                cache
            )  # deterministic: the same on every process
        logger.info("phoneme reader for pointer re-alignment: %s", self.probe_scores)
        self.by_key = {e["key"]: e for e in cache.entries()}

    def start(self, keys: list[str]) -> list:
        from streamchar.orchestrator.session import Orchestrator

        sessions = []
        for key in keys:
            orch = Orchestrator.from_config(self.cfg, (self.lm, self.vocab))
            orch.push_text(self.cache.meta(self.by_key[key])["transcript"], final=True)
            sessions.append(orch)
        return sessions

    @staticmethod
    def plan(sessions: list, device) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = [s.next_chunk() for s in sessions]
        units = torch.stack([c.units.long() for c in chunks]).to(device)
        speaking = torch.stack([c.speaking.long() for c in chunks]).to(device)
        return units, speaking

    def realign(self, sessions: list, audio: torch.Tensor) -> list[int]:
        """Move each pointer to where its generated audio ``[B, L_a, D_a]`` got; returns the lags."""
        return [s.realign(self.probe.log_probs(a.float())) for s, a in zip(sessions, audio, strict=True)]


def trained_timbre_bins(cfg: StreamCharConfig) -> int | None:
    """``distill.audio_correction`` -> the frequency bins per frame of the timbre the student is trained to
    make, or None (``whole``)."""
    kind = cfg.distill.audio_correction
    if kind not in ("whole", "timbre"):
        raise ValueError(f"distill.audio_correction must be whole or timbre, got '{kind}'.")
    if kind == "whole":
        return None
    from streamchar.codecs.audio import build_audio_codec

    return audio_correction_bins(kind, build_audio_codec(cfg, cfg.timeline))


def distill_stage2(
    cfg: StreamCharConfig,
    latents: str | Path,
    out: str | Path,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) stage 2 from ``distill.init`` (a stage-1 student, or the teacher itself: its samples at the
    student's steps are the start); the student ends in ``OUT/student``."""
    dcfg = cfg.distill
    if not dcfg.init:
        raise CheckpointError(
            "Stage 2 starts from a stage-1 student or the teacher: pass distill.init=RUN/student (from `streamchar "
            "distill stage1`) or distill.init=TEACHER_FOLDER."
        )
    init = resolve_asset_path(dcfg.init)
    if (init / "student").is_dir():
        init = init / "student"
    # settings are checked before the run folder or any weights are touched
    if dcfg.rollout_conditions not in ("corpus", "orchestrator"):
        raise ValueError(
            f"distill.rollout_conditions must be corpus or orchestrator, got '{dcfg.rollout_conditions}'."
        )
    for name in ("video_mean_weight", "audio_timbre_weight"):
        if getattr(dcfg, name) < 0:
            raise ValueError(f"distill.{name} must be 0 (off) or more, got {getattr(dcfg, name)}.")
    timbre_bins = trained_timbre_bins(cfg)
    R, total = dcfg.rollout_chunks, dcfg.rollout_steps
    desc = f"distill stage 2 ({dcfg.student_steps}-step, {R} chunks)"
    run = DistillRun(cfg, latents, out, "stage2", total, desc, init=str(init), progress=progress)
    acc, obj, b = run.accelerator, run.objective, dcfg.batch_size
    tl = run.timeline
    rollouts = RolloutDataset(run.cache, "train", chunks=R, length=2**31 - 1, seed=dcfg.seed + 5, timeline=tl)
    planner = PlannedConditions(cfg, run.cache) if dcfg.rollout_conditions == "orchestrator" else None
    phonemes = PhonemeTarget(run.cache, run.device) if dcfg.phoneme_weight > 0 else None
    video_mean = VideoMeanTarget(cfg, run.teacher) if dcfg.video_mean_weight > 0 else None
    audio_timbre = AudioTimbreTarget(cfg, run.teacher) if dcfg.audio_timbre_weight > 0 else None

    def train_step(step: int, g: torch.Generator):
        first = (step * run.world + run.rank) * b
        batch = to_device(collate([rollouts[first + i] for i in range(b)]), run.device)
        # the student's samples (its state space) and the same chunks as clean latents (the window memory)
        samples, chunks, history, contexts, draws_all, losses, lags, ces = [], [], [], [], [], [], [], []
        video_means, timbres = [], []
        sessions = planner.start(batch["key"]) if planner else None
        for r in range(R):
            cb = chunk_batch(batch, r)
            if planner:
                cb["units"], cb["speaking"] = planner.plan(sessions, run.device)
                cb["audio_mask"] = torch.ones_like(cb["audio_mask"])
            if run.priors is not None:
                with acc.autocast():
                    cb["prior_video"], cb["prior_audio"] = rollout_means(run.priors, cb, chunks, history, tl)
                history.append((cb["units"], cb["speaking"]))
            draws = {k: v.to(run.device) for k, v in
                     obj.draw(cb, g, total=b * run.world, offset=run.rank * b).items()}  # fmt: skip
            context = rollout_context(cb, chunks, tl)
            with acc.autocast():
                x0 = obj.student_x0(run.student, (draws["noise_video"], draws["noise_audio"]),
                                    Conditions.of(cb), context, cb["audio_mask"])  # fmt: skip
                # the state is (x0 - mu) / s, so its timbre is the correction's divided by s
                if timbre_bins is not None:
                    x0 = (x0[0], timbre_of(x0[1], timbre_bins))
                loss, _ = obj.dmd(x0, run.teacher, run.fake, cb, draws, context, run.audio_teacher)
                losses.append(loss.item())
                if phonemes is not None:
                    ce = phonemes.loss(run.teacher, x0[1], cb).mean()
                    ces.append(ce.item())
                    loss = loss + dcfg.phoneme_weight * ce
                if video_mean is not None:
                    vm = video_mean.loss(x0[0], cb, r).mean()
                    video_means.append(vm.item())
                    loss = loss + dcfg.video_mean_weight * vm
                if audio_timbre is not None:
                    timbre_error = audio_timbre.loss(x0[1], cb, r).mean()
                    timbres.append(timbre_error.item())
                    loss = loss + dcfg.audio_timbre_weight * timbre_error
            run.backward(loss / R, "student", sync=r == R - 1)
            samples.append((x0[0].detach().float(), x0[1].detach().float()))
            chunks.append(to_latents(run.teacher, *samples[-1], cb.get("prior_video"), cb.get("prior_audio")))
            if planner:
                lags += planner.realign(sessions, chunks[-1][1].cpu())
            contexts.append(context)
            draws_all.append((cb, draws))
        run.update("student", run.lr_at(step, total, dcfg.lr_student))
        fake_losses = []
        for u in range(dcfg.fake_updates):
            for r, ((cb, draws), context) in enumerate(zip(draws_all, contexts, strict=True)):
                with acc.autocast():
                    fake_loss, _ = obj.fake_score(run.fake, samples[r], cb, draws, u, context)
                run.backward(fake_loss / R, "fake", sync=r == R - 1)
                fake_losses.append(fake_loss.item())
            run.update("fake", run.lr_at(step, total, dcfg.lr_fake))
        last = {"dmd": sum(losses) / R, "dmd_last_chunk": losses[-1],
                "fake_flow": sum(fake_losses) / max(1, len(fake_losses))}  # fmt: skip
        if planner:
            last["pointer_lag"] = sum(lags) / max(1, len(lags))  # phonemes the audio is behind the plan
        if phonemes is not None:
            last["phoneme_ce"] = sum(ces) / R
        if video_mean is not None:
            last["video_mean"] = sum(video_means) / R
        if audio_timbre is not None:
            last["audio_timbre"] = sum(timbres) / R
        # the loop checks the chunks' summed loss once the step is done (the check is all it is used for)
        summed = (sum(losses) + dcfg.phoneme_weight * sum(ces) + dcfg.video_mean_weight * sum(video_means)
                  + dcfg.audio_timbre_weight * sum(timbres))  # fmt: skip
        return torch.tensor(summed), last

    summary = {"rollout_chunks": R, "rollout_conditions": dcfg.rollout_conditions,
               "phoneme_probe": planner.probe_scores if planner else None,
               "phoneme_loss": {"weight": dcfg.phoneme_weight, **phonemes.scores} if phonemes else None,
               "video_mean_weight": dcfg.video_mean_weight, "audio_timbre_weight": dcfg.audio_timbre_weight}  # fmt: skip
    return run.train(train_step, max_steps, summary, export={"init": str(init), "rollout_chunks": R})
