"""Measures of distilled students: ``streamchar distill compare`` (stage 1) and ``streamchar distill drift``
(stage 2).

**compare**: on the same held-out windows and the same noise, every sampler (the teacher at many
guided steps, the teacher at few guided steps, each student at its own steps) generates the current
chunk; each is measured against the many-step teacher (latent mean squared error, video and audio)
and against the ground truth (how well a ridge probe reads the true mouth opening from the generated
latents), its held-out flow-matching loss is reported, the wall time of each is measured side by side
in the same run (speed-up against the many-step teacher), and a contact sheet stacks one decoded
frame per window, one row per sampler, under the ground truth.

**drift**: a long session (``chunks`` chunks, the conditions of a held-out character's clips played one
after another) per model; per chunk, the decoded frames' mean absolute difference to the reference
image (distance to the identity) and two quality proxies against the ground-truth frames of the same
character: sharpness (the protocols' mean absolute Laplacian of the luma, :func:`~streamchar.eval.protocols.
measure.sharpness`, as a ratio to the ground truth's) and the colour
spread (per-channel standard deviation, as a ratio). No learned encoder is involved: the evaluation
suite's identity encoder and Fréchet distance will replace these proxies when they land.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamchar.config import StreamCharConfig
from streamchar.data.latents import LatentCache
from streamchar.data.windows import WindowDataset
from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.flow import EulerSampler, Guidance
from streamchar.denoiser.objective import TeacherObjective
from streamchar.denoiser.residual import residual_batch, to_latents
from streamchar.eval.reports.distill import compare_table, drift_table, plot_drift
from streamchar.loaders import load_priors, load_teacher, read_distilled
from streamchar.precision import resolve_mixed_precision
from streamchar.training.loop import collate
from streamchar.training.teacher import evaluate, latent_spec_from_cache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    name: str
    path: str
    sampler: EulerSampler
    use_sink: bool = True


def contender(
    name: str, path: str, steps: int | None, cfg: StreamCharConfig, use_sink: bool = True
) -> Contender:
    """A model and the sampler it runs with: a student's own steps and folded guidance, or the teacher's
    guidance (``sample`` config) at ``steps``."""
    info = read_distilled(path)
    if info is not None:
        return Contender(
            name, path, EulerSampler(steps or int(info["steps"]), float(info["shift"])), use_sink
        )
    s = cfg.sample
    guidance = Guidance(s.guidance_conditions, s.guidance_ref_image, s.guidance_ref_voice)
    return Contender(name, path, EulerSampler(steps or s.steps, s.shift, guidance), use_sink)


def parse_contenders(specs: list[str], cfg: StreamCharConfig) -> list[Contender]:
    """``NAME=PATH[@STEPS][:nosink]`` strings -> contenders."""
    out = []
    for spec in specs:
        if "=" not in spec:
            raise ValueError(
                f"'{spec}' is not NAME=PATH[@STEPS][:nosink], e.g. teacher32=checkpoints/tiny/teacher@32."
            )
        name, rest = spec.split("=", 1)
        use_sink = not rest.endswith(":nosink")
        rest = rest.removesuffix(":nosink")
        path, _, steps = rest.partition("@")
        out.append(contender(name, path, int(steps) if steps else None, cfg, use_sink))
    return out


def _decode(codec, latents: torch.Tensor, frames: int | None = None) -> np.ndarray:
    out = np.asarray(codec.decode(latents.float().cpu()))
    return out[:frames] if frames else out


# -- stage 1: students against the many-step teacher ------------------------------------------------
def compare_samplers(
    cfg: StreamCharConfig, contenders: list[Contender], latents: str | Path, out: str | Path, windows: int = 8,
    reference: str | None = None,
) -> dict:  # fmt: skip
    """See the module docstring; ``reference`` names the contender the others are measured against
    (default: the one with the most steps)."""
    from PIL import Image

    from streamchar.codecs.video import video_codec_from_config
    from streamchar.eval.instruments.mouth_probe import fit_mouth_probe
    from streamchar.eval.metrics.statistics import pearson

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = LatentCache(latents)
    tl = cache.window_timeline(cfg.timeline)
    spec = latent_spec_from_cache(cache)
    split = "test" if cache.entries("test") else "train"
    priors = load_priors(cfg) if any(load_teacher(c.path, cfg, spec).residual for c in contenders) else None
    data = WindowDataset(cache, split, length=windows, seed=4242, first_chunk_prob=0.25, timeline=tl,
                         unit_context=priors.context if priors is not None else 0)  # fmt: skip
    batch = collate([data[i] for i in range(windows)])
    g = torch.Generator().manual_seed(17)
    noise = torch.randn(batch["video"].shape, generator=g), torch.randn(batch["audio"].shape, generator=g)
    context = TeacherObjective.context(batch)
    precision = resolve_mixed_precision(cfg.sample.mixed_precision)
    autocast = functools.partial(torch.autocast, "cpu", torch.bfloat16, enabled=precision == "bf16")
    reference = (
        reference or max(contenders, key=lambda c: c.sampler.steps * c.sampler.guidance.num_branches).name
    )
    samples, seconds, flow = {}, {}, {}
    for c in contenders:
        model = load_teacher(c.path, cfg, spec)
        prepared = residual_batch(model, batch, priors)  # a residual model's states around the priors' means
        conditions = Conditions.of(prepared)
        with autocast():
            c.sampler.sample(model, noise[0][:1], noise[1][:1], conditions.head(1), _first(context),
                             audio_valid=batch["audio_mask"][:1])  # warm-up  # fmt: skip
            start = time.perf_counter()
            video, audio = c.sampler.sample(
                model, noise[0], noise[1], conditions, context, audio_valid=batch["audio_mask"]
            )
            seconds[c.name] = (time.perf_counter() - start) / windows
        samples[c.name] = to_latents(model, video.float(), audio.float(), prepared.get("prior_video"),
                                     prepared.get("prior_audio"))  # fmt: skip
        flow[c.name] = evaluate(
            model, TeacherObjective(), [data[i] for i in range(windows)], 0, "cpu", autocast, priors
        )
        logger.info("%s: %.3f s per window", c.name, seconds[c.name])
    probe = fit_mouth_probe(cache, tl)
    mouth_truth = batch["mouth_open"].numpy()  # [B, L_v] video frames
    mask = batch["audio_mask"].float()[..., None]
    ref_video, ref_audio = samples[reference]
    rows = {}
    for c in contenders:
        video, audio = samples[c.name]
        mse_audio = float(((audio - ref_audio).pow(2) * mask).sum() / (mask.sum() * audio.shape[-1]))
        read = np.stack([probe.predict(v) for v in video])  # [B, L] latent frames
        truth = np.stack([_per_latent(m, tl, video.shape[2]) for m in mouth_truth])
        ok = np.isfinite(truth).all(1)
        rows[c.name] = {
            "steps": c.sampler.steps, "branches": c.sampler.guidance.num_branches,
            "seconds_per_window": round(seconds[c.name], 4),
            "speedup_vs_reference": round(seconds[reference] / seconds[c.name], 2),
            "video_mse_to_reference": round(float((video - ref_video).pow(2).mean()), 5),
            "audio_mse_to_reference": round(mse_audio, 5),
            "video_mse_to_ground_truth": round(float((video - batch["video"]).pow(2).mean()), 5),
            "mouth_probe_r": round(pearson(read[ok].ravel(), truth[ok].ravel()), 3) if ok.any() else None,
            "heldout_flow_loss": {k: round(v, 5) for k, v in flow[c.name].items()},
        }  # fmt: skip
    truth_read = np.stack([probe.predict(v) for v in batch["video"].float()])
    truth = np.stack([_per_latent(m, tl, batch["video"].shape[2]) for m in mouth_truth])
    ok = np.isfinite(truth).all(1)
    result = {"reference": reference, "split": split, "windows": windows, "precision": precision,
              "mouth_probe_r_ground_truth_latents": round(pearson(truth_read[ok].ravel(), truth[ok].ravel()), 3),
              "samplers": rows}  # fmt: skip
    codec = video_codec_from_config(cfg)
    mid = batch["video"].shape[2] // 2
    sheet_rows = [np.concatenate([_decode(codec, batch["video"][i])[mid] for i in range(windows)], axis=1)]
    for c in contenders:
        v = samples[c.name][0]
        sheet_rows.append(np.concatenate([_decode(codec, v[i])[mid] for i in range(windows)], axis=1))
    Image.fromarray(np.concatenate(sheet_rows)).save(out / "compare_sheet.png")
    result["contact_sheet_rows"] = ["ground truth"] + [c.name for c in contenders]
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compare.md").write_text(compare_table(result))
    return result


def _first(context):
    return type(context)(*(getattr(context, f)[:1] for f in context.__dataclass_fields__))


def _per_latent(mouth: np.ndarray, tl, latent_frames: int) -> np.ndarray:
    out = np.full(latent_frames, np.nan, np.float32)
    for i in range(latent_frames):
        a, b = tl.latent_frame_span(i)
        if a < len(mouth):
            out[i] = np.nanmean(mouth[a : min(b, len(mouth))])
    return out


# -- stage 2: drift over a long session ---------------------------------------------------------------
def session_conditions(cache: LatentCache, tl, chunks: int):
    """A held-out character's clips played back to back for ``chunks`` chunks, with its references and the
    ground-truth latents of those clips."""
    from streamchar.eval.protocols.teacher_samples import chunk_conditions, pick_clip, reference_for

    entry = pick_clip(cache, None, tl.chunk_latent_frames, min_chunks=2)
    split = "test" if cache.entries("test") else "train"
    clips = [e for e in cache.entries(split) if e["char_id"] == entry["char_id"]] or [entry]
    conds, truth, k = [], [], 0
    while len(conds) < chunks:
        clip = clips[k % len(clips)]
        n = clip["latent_frames"] // tl.chunk_latent_frames
        if n:
            c, _ = chunk_conditions(cache, clip, n, tl)
            conds.extend(c)
            truth.append(cache.slice(clip, "video", 0, n * tl.chunk_latent_frames, dim=1).float())
        k += 1
    image, voice, valid, ref_key = reference_for(cache, entry, tl)
    return conds[:chunks], torch.cat(truth, dim=1), (image, voice, valid), entry["char_id"]


def drift_session(
    cfg: StreamCharConfig, contenders: list[Contender], latents: str | Path, out: str | Path, chunks: int = 60,
    segment: int = 10,
) -> dict:  # fmt: skip
    from streamchar.codecs.video import video_codec_from_config
    from streamchar.denoiser.rollout import generate
    from streamchar.eval.protocols.measure import sharpness

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = LatentCache(latents)
    tl = cache.window_timeline(cfg.timeline)
    spec = latent_spec_from_cache(cache)
    conds, truth_latents, (image, voice, valid), char = session_conditions(cache, tl, chunks)
    codec = video_codec_from_config(cfg)
    reference = _decode(codec, image[0])[0].astype(np.float32)
    truth = _decode(codec, truth_latents)
    truth_sharp = sharpness(truth, every=1)
    truth_std = truth.reshape(-1, 3).astype(np.float32).std(0)
    precision = resolve_mixed_precision(cfg.sample.mixed_precision)
    curves = {}
    for c in contenders:
        model = load_teacher(c.path, cfg, spec)
        priors = load_priors(cfg) if model.residual else None
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            rollout = generate(model, c.sampler, image, voice, conds, torch.Generator().manual_seed(cfg.sample.seed),
                               valid, use_sink=c.use_sink, priors=priors)  # fmt: skip
        wall = time.perf_counter() - start
        L = tl.chunk_latent_frames
        identity, sharp, spread = [], [], []
        for i in range(chunks):
            frames = _decode(codec, rollout.video[0, :, i * L : (i + 1) * L]).astype(np.float32)
            identity.append(float(np.abs(frames - reference).mean()))
            sharp.append(sharpness(frames, every=1) / truth_sharp)
            spread.append(float((frames.reshape(-1, 3).std(0) / truth_std).mean()))
        curves[c.name] = {"identity_l1": identity, "sharpness_ratio": sharp, "colour_spread_ratio": spread,
                          "steps": c.sampler.steps, "sink": c.use_sink, "seconds": round(wall, 2)}  # fmt: skip
        logger.info("%s: %d chunks in %.1f s", c.name, chunks, wall)
    segments = {}
    for name, cv in curves.items():
        segs = []
        for s in range(0, chunks, segment):
            segs.append({m: round(float(np.mean(cv[m][s : s + segment])), 4)
                         for m in ("identity_l1", "sharpness_ratio", "colour_spread_ratio")})  # fmt: skip
        segments[name] = segs
    result = {"chunks": chunks, "segment_chunks": segment, "character": char, "chunk_seconds": tl.chunk_seconds,
              "precision": precision, "segments": segments, "curves": curves}  # fmt: skip
    (out / "drift.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_drift(result, out / "drift.png")
    (out / "drift.md").write_text(drift_table(result))
    return result
