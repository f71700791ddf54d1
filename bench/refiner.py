"""Does the DiT add something to the priors? Teachers (or students) side by side with the priors alone.

Held-out clips of a latent cache are regenerated chunk after chunk from their own frame-aligned units (no
orchestrator) with a reference image and voice from another clip of the same character, as the engine
streams them: by the priors alone (``prior``), and by each ``--model`` refining them (or, for a plain model,
from noise). The evaluation instruments read every row the same way: PER (against the clip's phonemes) and
WER of the speech decoded by the mel codec, voice similarity to the reference voice, Sync-C and its offset,
mouth r (the mouth reader against the renderer's true opening), identity similarity to the reference image,
and the Fréchet distance of the frames to the clips' own frames (the ground-truth row: the clips' latents
decoded). Every row is measured in the same run.

    .venv/bin/python bench/refiner.py --model residual=runs/teacher-a@4 --model plain=runs/old-tiny/teacher@16 \
        --prior-audio runs/prior-audio --prior-video runs/prior-video --clips 12 --json out/refiner.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from streamchar.codecs.audio import build_audio_codec
from streamchar.codecs.video import video_codec_from_config
from streamchar.config import load_config
from streamchar.data.latents import LatentCache
from streamchar.data.phonemes import SILENCE_ID
from streamchar.denoiser.flow import EulerSampler, Guidance
from streamchar.denoiser.prior import Priors
from streamchar.denoiser.residual import audio_correction_bins, video_correction_mask
from streamchar.denoiser.rollout import generate
from streamchar.eval.instruments.encoders import load_identity_encoder, load_speaker_encoder
from streamchar.eval.instruments.mouth_probe import load_mouth_reader
from streamchar.eval.instruments.recognizer import load_recognizer
from streamchar.eval.instruments.sync_expert import MAX_OFFSET, WINDOW, load_sync_expert, sync_scores_of
from streamchar.eval.metrics.error_rates import edit_distance, normalise_words
from streamchar.eval.metrics.features import clip_phoneme_ids, mouth_crops
from streamchar.eval.metrics.statistics import frechet_block_sd, frechet_distance, pearson
from streamchar.eval.protocols.teacher_samples import chunk_conditions, reference_for
from streamchar.loaders import load_prior, load_teacher
from streamchar.training.teacher import latent_spec_from_cache


def parse_model(spec: str) -> tuple[str, str, int]:
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, _, steps = rest.partition("@")
    return name or path, path, int(steps) if steps else 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH[@STEPS]",
        help="teacher run / checkpoint or student folder (a student runs its own steps, unguided)",
    )
    parser.add_argument("--prior-audio", default="checkpoints/tiny/prior-audio")
    parser.add_argument("--prior-video", default="checkpoints/tiny/prior-video")
    parser.add_argument(
        "--prior-last-noise",
        type=float,
        default=0.0,
        help="noise on the last latent the video prior reads (engine.prior_last_noise), every row",
    )
    parser.add_argument("--latents", default="data/latents")
    parser.add_argument("--instruments", default="checkpoints/eval")
    parser.add_argument("--clips", type=int, default=12, help="held-out clips, at least 3 chunks long")
    parser.add_argument(
        "--guidance",
        type=float,
        nargs=3,
        default=None,
        metavar=("COND", "IMAGE", "VOICE"),
        help="a teacher's guidance scales (default: the sample config's)",
    )
    parser.add_argument(
        "--start",
        type=float,
        default=None,
        help="sampling start time (< 1: shallow, from noised means; default: the model's sample_start)",
    )
    parser.add_argument(
        "--keep",
        action="append",
        type=float,
        nargs=2,
        default=[],
        metavar=("VIDEO", "AUDIO"),
        help="also run every model keeping this share of its correction of the means (engine.keep_correction); "
        "repeat for a sweep",
    )
    parser.add_argument(
        "--keep-timbre",
        action="append",
        type=float,
        nargs=2,
        default=[],
        metavar=("VIDEO", "AUDIO"),
        help="as --keep, with only the timbre of the audio correction (engine.audio_correction=timbre)",
    )
    parser.add_argument(
        "--timbre-memory",
        type=float,
        default=0.0,
        help="the --keep-timbre rows' running average over the chunks (engine.timbre_memory)",
    )
    parser.add_argument(
        "--speech-timbre",
        action="store_true",
        help="the --keep-timbre rows take the timbre over the tokens where a phoneme is planned and play it there "
        "alone (engine.audio_correction=speech_timbre)",
    )
    parser.add_argument(
        "--outside-mouth",
        action="store_true",
        help="also run every model playing its video correction only outside the mouth box (engine.mouth_box), "
        "the video prior's lip shapes kept (engine.video_correction=outside_mouth)",
    )
    parser.add_argument(
        "--shown-only",
        action="store_true",
        help="with --outside-mouth, also rows that show that correction without feeding it back to the next chunk "
        "(engine.video_correction_feedback=false)",
    )
    parser.add_argument(
        "--exclude",
        default=None,
        metavar="REPORT.json",
        help="skip the clips a protocol report evaluated (choose settings on clips the protocol does not use)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.shown_only and not args.outside_mouth:
        parser.error("--shown-only adds rows beside --outside-mouth's; pass both.")

    cfg = load_config("tiny")
    cache = LatentCache(args.latents)
    tl = cache.window_timeline(cfg.timeline)
    spec = latent_spec_from_cache(cache)
    priors = Priors(load_prior(args.prior_audio, "audio"), load_prior(args.prior_video, "video"))
    video_codec, audio_codec = video_codec_from_config(cfg), build_audio_codec(cfg, tl)
    bins = audio_correction_bins("timbre", audio_codec)
    root = args.instruments
    recognizer = load_recognizer(f"{root}/recognizer", words=True)
    speaker, identity = load_speaker_encoder(f"{root}/speaker"), load_identity_encoder(f"{root}/identity")
    mouth, sync = load_mouth_reader(f"{root}/mouth"), load_sync_expert(f"{root}/sync")
    guidance = Guidance(*(args.guidance or (cfg.sample.guidance_conditions, cfg.sample.guidance_ref_image,
                                            cfg.sample.guidance_ref_voice)))  # fmt: skip
    excluded = set(json.loads(open(args.exclude).read())["clips"]) if args.exclude else set()
    entries = [e for e in cache.entries("test") if e["latent_frames"] >= 3 * tl.chunk_latent_frames
               and cache.tensor(e, "speaking").sum() > 0 and e["key"] not in excluded][: args.clips]  # fmt: skip
    mask = video_correction_mask("outside_mouth", cfg.engine.mouth_box, (spec.latent_size,) * 2)
    models = {"prior": None}
    masks = {}  # row -> its video correction mask (--outside-mouth)
    shown_only = set()  # rows whose video correction is not fed back (--shown-only)
    for item in args.model:
        name, path, steps = parse_model(item)
        model = load_teacher(path, cfg, spec)
        models[name] = (model, path, steps, (1.0, 1.0), None)
        if args.outside_mouth:
            models[f"{name} outside mouth"] = (model, path, steps, (1.0, 1.0), None)
            masks[f"{name} outside mouth"] = mask
        if args.outside_mouth and args.shown_only:
            models[f"{name} outside mouth, shown only"] = (model, path, steps, (1.0, 1.0), None)
            masks[f"{name} outside mouth, shown only"] = mask
            shown_only.add(f"{name} outside mouth, shown only")
        for keep in args.keep:
            models[f"{name} keep={keep[0]:g}/{keep[1]:g}"] = (model, path, steps, tuple(keep), None)
        for keep in args.keep_timbre:
            models[f"{name} keep={keep[0]:g}/{keep[1]:g} timbre"] = (model, path, steps, tuple(keep), bins)
    rows = {name: {"phoneme_edits": 0, "word_edits": 0, "voice": [], "sync_c": [], "offset": [], "mouth": [],
                   "identity": [], "frames": [], "seconds": 0.0} for name in ["ground_truth", *models]}  # fmt: skip
    phonemes = words = 0
    truth_frames = []
    for i, entry in enumerate(entries):
        chunks = -(-entry["latent_frames"] // tl.chunk_latent_frames)  # the last one padded with silence
        conditions, given = chunk_conditions(cache, entry, chunks, tl)
        image, voice, valid, _ = reference_for(cache, entry, tl)
        ref_wave = audio_codec.decode(voice[0][valid[0]]).numpy()
        ref_image = np.asarray(video_codec.decode(image[0]))[0]
        reference, text = clip_phoneme_ids(cache.meta(entry)), cache.meta(entry)["transcript"]
        phonemes, words = phonemes + len(reference), words + len(normalise_words(text))
        true_open = cache.tensor(entry, "gt/mouth_open").float().numpy()
        latents = {"ground_truth": (cache.slice(entry, "video", 0, chunks * tl.chunk_latent_frames, dim=1).float(),
                                    torch.cat(given, 1)[0].float())}  # fmt: skip
        for name, loaded in models.items():
            model, steps = (next(m for m in models.values() if m is not None)[0], 1) if loaded is None else (
                loaded[0], loaded[2])  # fmt: skip
            from streamchar.loaders import read_distilled

            distilled = read_distilled(loaded[1]) if loaded is not None else None
            sampler = EulerSampler(
                steps=steps, guidance=Guidance() if distilled else guidance, start=args.start
            )
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16):
                rollout = generate(model, sampler, image, voice, conditions, torch.Generator().manual_seed(i), valid,
                                   priors=priors, refine=loaded is not None,
                                   keep=loaded[3] if loaded else (1.0, 1.0),
                                   timbre_bins=loaded[4] if loaded else None, timbre_memory=args.timbre_memory,
                                   timbre_speech_only=args.speech_timbre,
                                   prior_last_noise=args.prior_last_noise, video_mask=masks.get(name),
                                   video_feedback=name not in shown_only)  # fmt: skip
            rows[name]["seconds"] += time.perf_counter() - start
            latents[name] = (rollout.video[0].float(), rollout.audio[0].float())
        for name, (video, audio) in latents.items():
            frames = np.asarray(video_codec.decode(video))
            wave = audio_codec.decode(audio).numpy()[: tl.video_frames_to_samples(len(frames))]
            said = [p for p in recognizer.phonemes(wave) if p != SILENCE_ID]
            row = rows[name]
            row["phoneme_edits"] += edit_distance(reference, said)
            row["word_edits"] += edit_distance(
                normalise_words(text), recognizer.lexicon.decode(said, recognizer.word_penalty)
            )
            row["voice"].append(float(speaker.embed_audio(wave) @ speaker.embed_audio(ref_wave)))
            if len(frames) >= WINDOW + 2 * MAX_OFFSET:
                scores = sync_scores_of(sync, frames, wave)
                row["sync_c"].append(scores["sync_c"])
                row["offset"].append(scores["offset"])
            n = min(len(frames), len(true_open))
            row["mouth"].append(pearson(mouth.predict(mouth_crops(frames[:n])), true_open[:n]))
            picks = frames[:: max(1, len(frames) // 16)]
            row["identity"].append(
                float((identity.embed_frames(picks) @ identity.embed_frames(ref_image[None]).T).mean())
            )
            row["frames"].append(frames[::2])
            if name == "ground_truth":
                truth_frames.append(frames[::2])
    truth_features = identity.frechet_features(np.concatenate(truth_frames))
    features = {name: identity.frechet_features(np.concatenate(row["frames"])) for name, row in rows.items()}
    block = max(1, cfg.timeline.chunk_video_frames(1) // 2)  # one chunk of the every-second frames measured
    result = {"clips": len(entries), "phonemes": phonemes, "words": words, "guidance": list(guidance.__dict__.values()),
              "models": {name: str(m[1]) + f"@{m[2]} keep={m[3]}" + (" timbre" if m[4] else "") if m else "priors alone"
                         for name, m in models.items()},
              "timbre_memory": args.timbre_memory, "speech_timbre": args.speech_timbre,
              "prior_last_noise": args.prior_last_noise, "rows": {}}  # fmt: skip
    for name, row in rows.items():
        result["rows"][name] = {
            "per": round(row["phoneme_edits"] / max(1, phonemes), 4),
            "wer": round(row["word_edits"] / max(1, words), 4),
            "voice_sim": round(float(np.mean(row["voice"])), 4),
            "sync_c": round(float(np.mean(row["sync_c"])), 4) if row["sync_c"] else None,
            "offset_within_1": round(float(np.mean(np.abs(row["offset"]) <= 1)), 3) if row["offset"] else None,
            "mouth_r": round(float(np.nanmean(row["mouth"])), 4),
            "identity_sim": round(float(np.mean(row["identity"])), 4),
            "frechet": round(frechet_distance(features[name], truth_features), 4),
            # the spread of the row's Fréchet over a block bootstrap of its chunks, and of its difference from
            # the priors alone's (the same frames resampled in both: a paired comparison)
            "frechet_sd": round(frechet_block_sd(features[name], truth_features, block), 4),
            "frechet_minus_prior_sd": None if name in ("prior", "ground_truth") else round(
                frechet_block_sd(features[name], truth_features, block, minus=features["prior"]), 4),
            "seconds_per_clip": round(row["seconds"] / max(1, len(entries)), 2),
        }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
