"""The evaluation protocols: checkpoints judged by the trained instruments, on held-out identities and text.

- **short**: one held-out clip per held-out identity (``--clips``); each checkpoint speaks the clip's
  transcript as the clip's character (reference image and voice from the corpus), through the streaming
  engine; the ground-truth clips are measured the same way as the floor/ceiling row.
- **long**: sessions of ``--minutes`` (5 and more) per checkpoint, fed held-out sentences turn after turn;
  every metric is reported per ``--segment`` seconds, so drift shows as a trend. A segment's Fréchet distance
  comes with its spread over a bootstrap of the segment's chunks, and the first-to-last change with its own.

Metrics per clip or segment: PER and WER (CTC recognizer; reference phonemes are espeak's for the text),
Sync-C, Sync-D and offset (sync expert), mouth-opening correlation (pixel probe against the opening the
synthetic renderer draws for the planned phonemes; against the true track for ground truth), identity
similarity to the reference image and voice similarity to the reference voice (cosine), Fréchet distance of
the frames to the held-out ground-truth frames; and the engine's streaming figures: time to first frame,
per-chunk latency p50/p95/p99, real-time factor and deadline misses. Sessions run offline (as fast as
possible), with the playback clock started at the first frame, so a deadline is missed exactly when a live
session would have stalled. A long session's streaming figures come from the engine's own statistics, which
also count the few chunks made ahead before the session stopped at ``--minutes``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamchar.eval.metrics.features import load_eval_split
from streamchar.eval.protocols.measure import Instruments, measure, published_frechet, summarise
from streamchar.eval.protocols.speak import (
    DRIVERS,
    driving_speech,
    engine_for,
    parse_ckpt,
    speak,
    speak_audio,
)
from streamchar.eval.reports.protocol import write_report

logger = logging.getLogger(__name__)


def _heldout_clips(corpus, count: int, skip: int = 0) -> list[dict]:
    """Held-out monologues, one per held-out identity in turn (first clips, then second ones, ...), ``count``
    in all after the first ``skip`` (a development set: settings are chosen on clips the reported rows do
    not use). A character's reference clip (its first monologue by key,
    :func:`~streamchar.engine.characters.character_from_corpus`) is left out when the character has another,
    so a clip is never judged against its own first frame."""
    by_char: dict[int, list[dict]] = {}
    for e in sorted(corpus.entries("test"), key=lambda e: e["key"]):
        if e.get("kind") == "monologue":
            by_char.setdefault(e["char_id"], []).append(e)
    by_char = {c: (v[1:] if len(v) > 1 else v) for c, v in by_char.items()}
    rounds = max((len(v) for v in by_char.values()), default=0)
    ordered = [v[r] for r in range(rounds) for v in by_char.values() if len(v) > r]
    if not ordered:
        raise ValueError(
            "The corpus has no held-out (test) monologue to evaluate on; synthesise one with held-out identities."
        )
    if skip >= len(ordered):
        raise ValueError(
            f"--skip-clips {skip} leaves none of the {len(ordered)} held-out monologues; lower it."
        )
    return ordered[skip : skip + count]


def _character(corpus, char_id: int, turn_rows, cache: dict, size: int):
    """A held-out corpus character, its reference image at the engine's ``size``."""
    from dataclasses import replace

    from PIL import Image

    from streamchar.engine.characters import character_from_corpus

    if char_id not in cache:
        char = character_from_corpus(corpus, char_id, turn_rows)[0]
        if char.image.shape[0] != size:
            char = replace(
                char, image=np.asarray(Image.fromarray(char.image).resize((size, size), Image.LANCZOS))
            )
        cache[char_id] = char
    return cache[char_id]


def _fd(inst: Instruments, frames: np.ndarray, reference: np.ndarray) -> float:
    from streamchar.eval.metrics.statistics import frechet_distance

    # five decimals: the long protocol's drift target is 1 % of values near 0.07
    return round(frechet_distance(inst.identity.frechet_features(frames), reference), 5)


def _reference_features(inst: Instruments, eval_cache: str | Path) -> np.ndarray:
    """Fréchet features of every held-out face of the evaluation cache (the short protocol's reference)."""
    return inst.identity.frechet_features(load_eval_split(eval_cache, "test").faces.numpy())


def _character_features(inst: Instruments, corpus, char_id: int) -> np.ndarray:
    """Fréchet features of every second frame of one character's ground-truth clips (the long protocol's
    reference: a session shows one character, so it is compared with that character's own frames)."""
    frames = [corpus.clip(e).frames[::2] for e in corpus.entries() if e["char_id"] == char_id]
    return inst.identity.frechet_features(np.concatenate(frames))


def _latency(values: list[float]) -> dict:
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in (50, 95, 99)} if values else {}


def short_protocol(
    cfg, ckpts: list[str], inst: Instruments, corpus, turn_rows, eval_cache, clips: int, skip: int = 0
) -> dict:
    from streamchar.data.shards import Corpus
    from streamchar.eval.instruments.mouth_probe import planned_mouth_open
    from streamchar.eval.metrics.features import clip_phoneme_ids

    corpus = Corpus(corpus)
    entries = _heldout_clips(corpus, clips, skip)
    reference = _reference_features(inst, eval_cache)
    characters: dict = {}
    result = {"protocol": "short", "clips": [e["key"] for e in entries], "models": {}}
    truth_rows, truth_frames = [], []
    for entry in tqdm(entries, desc="ground truth", unit="clip"):
        clip = corpus.clip(entry)
        char = _character(corpus, entry["char_id"], turn_rows, characters, cfg.video_codec.image_size)
        true_open = clip.ground_truth.get("mouth_open")
        spoken = clip_phoneme_ids(clip.meta)  # what the clip's own (en-us or en) voice said
        truth_rows.append(measure(inst, clip.frames, clip.audio, clip.meta["transcript"], char.image, char.voice,
                                  true_open, phonemes=spoken))  # fmt: skip
        truth_frames.append(clip.frames)
    result["models"]["ground_truth"] = summarise(truth_rows) | {
        "frechet": _fd(inst, np.concatenate([f[::2] for f in truth_frames]), reference)
    }
    from streamchar.eval.metrics.statistics import frechet_distance

    features, lengths = {}, {}  # each model's Fréchet features (every second frame) and frames per clip
    prior_alone = None  # the priors-alone row (:prioronly), which every other row's Fréchet is paired with
    for spec in ckpts:
        ckpt = parse_ckpt(spec)
        name, path, steps, switches = ckpt
        if switches.get("refine") is False and ckpt.driver is None and prior_alone is None:
            prior_alone = name
        engine = engine_for(cfg, path, switches)
        rows, frames_all, latencies, ttff, rtf, misses, lags = [], [], [], [], [], 0, []
        for i, entry in enumerate(tqdm(entries, desc=name, unit="clip")):
            text = corpus.reader(entry["shard"]).meta(entry["key"])["transcript"]
            char = _character(corpus, entry["char_id"], turn_rows, characters, cfg.video_codec.image_size)
            if ckpt.driver is None:
                generated, _ = speak(engine, char, [text], steps, seed=i)
                frames, audio, phonemes, _ = generated.arrays()
            else:  # audio-driven: the speech is given; its own frame phonemes are the planned mouth
                wave, phonemes = driving_speech(ckpt.driver, corpus.clip(entry), engine.timeline)
                generated = speak_audio(engine, char, wave, steps, seed=i)
                frames, audio, _, _ = generated.arrays()
                phonemes = np.concatenate([phonemes, np.zeros(max(0, len(frames) - len(phonemes)), np.int64)])
            rows.append(
                measure(
                    inst,
                    frames,
                    audio,
                    text,
                    char.image,
                    char.voice,
                    planned_mouth_open(phonemes[: len(frames)], engine.timeline.fps),
                )  # fmt: skip
            )
            frames_all.append(frames)
            latencies += generated.latencies
            ttff.append(generated.stats["time_to_first_frame_s"])
            rtf.append(generated.stats["real_time_factor"])
            misses += generated.stats["deadline_misses"]
            if generated.stats.get("realign_lag_mean") is not None:
                lags.append(generated.stats["realign_lag_mean"])
        lengths[name] = [len(f[::2]) for f in frames_all]
        features[name] = inst.identity.frechet_features(np.concatenate([f[::2] for f in frames_all]))
        result["models"][name] = summarise(rows) | {
            "frechet": round(frechet_distance(features[name], reference), 5),
            **published_frechet(inst.external, frames_all, truth_frames),
            "time_to_first_frame_s": round(float(np.median(ttff)), 4),
            "chunk_latency_s": _latency(latencies),
            "real_time_factor": round(float(np.mean(rtf)), 4),
            "deadline_misses": misses,
            "chunks": len(latencies),
            "steps": steps or (engine.distilled or {}).get("steps") or cfg.engine.steps,
            "driver": DRIVERS.get(ckpt.driver, "text through the orchestrator"),
            # how far the pointer was ahead of the speech when it was realigned (phonemes; None: no realignment)
            "realign_lag_mean": round(float(np.mean(lags)), 3) if lags else None,
            "latencies": [round(x, 4) for x in latencies],
            "per_clip": _per_clip(entries, rows, rtf),
        }
    result["models"]["ground_truth"]["per_clip"] = _per_clip(entries, truth_rows)
    _frechet_spreads(cfg, result["models"], features, lengths, reference, prior_alone)
    paired_with(result["models"], prior_alone)
    return result


PAIRED_METRICS = ("voice_sim", "mouth_r", "sync_c", "frame_change")  # besides PER


def paired_with(models: dict, base: str | None) -> None:
    """Each row's per-clip differences from row ``base`` (the priors alone), as ``minus_prior_alone``: for PER
    and each of :data:`PAIRED_METRICS`, ``[difference, standard error]`` over the clips (PER: the difference
    in edits over all phonemes, its error from the spread of the clips' edit differences), so a row that
    "beats the priors alone" says by how many errors. Rows whose clips are not ``base``'s are left as they
    are."""
    if base is None or base not in models:
        return
    reference = {c["key"]: c for c in models[base].get("per_clip", [])}
    for name, model in models.items():
        clips = model.get("per_clip", [])
        if name == base or not clips or {c["key"] for c in clips} != set(reference):
            continue
        n, paired = len(clips), {}
        edits = np.array([c["phoneme_edits"] - reference[c["key"]]["phoneme_edits"] for c in clips], float)
        phonemes = sum(c["phonemes"] for c in clips)
        if n > 1 and phonemes:
            paired["per"] = [
                round(edits.sum() / phonemes, 5),
                round(np.sqrt(n) * edits.std(ddof=1) / phonemes, 5),
            ]
        for key in PAIRED_METRICS:
            d = np.array(
                [c[key] - reference[c["key"]][key] for c in clips if key in c and key in reference[c["key"]]]
            )
            if len(d) > 1:
                paired[key] = [round(float(d.mean()), 5), round(float(d.std(ddof=1) / np.sqrt(len(d))), 5)]
        model["minus_prior_alone"] = paired


def _frechet_spreads(cfg, models: dict, features: dict[str, np.ndarray], lengths: dict[str, list[int]],
                     reference: np.ndarray, prior_alone: str | None) -> None:  # fmt: skip
    """Each row's ``frechet_sd`` (a block bootstrap over its chunks) and, where the run has a priors-alone row
    whose clips are as long, ``frechet_minus_prior_alone`` and its paired spread (the same chunks resampled in
    both rows): whether the refiner moves Fréchet by more than the clips' own noise."""
    from streamchar.eval.metrics.statistics import frechet_block_sd

    block = max(1, cfg.timeline.chunk_video_frames(1) // 2)  # one chunk of the every-second frames measured
    for name, feats in features.items():
        if len(feats) < 2 * block:
            continue
        models[name]["frechet_sd"] = round(frechet_block_sd(feats, reference, block), 5)
        if prior_alone is None or name == prior_alone or lengths[name] != lengths[prior_alone]:
            continue
        base = features[prior_alone]
        models[name]["frechet_minus_prior_alone"] = round(
            models[name]["frechet"] - models[prior_alone]["frechet"], 5
        )
        models[name]["frechet_minus_prior_alone_sd"] = round(
            frechet_block_sd(feats, reference, block, minus=base), 5
        )


def _per_clip(entries: list[dict], rows: list[dict], rtf: list[float] | None = None) -> list[dict]:
    """Each clip's own figures (its key, edits over length, sync offset, ...), to find the clips a mean hides."""
    out = []
    for i, (entry, row) in enumerate(zip(entries, rows, strict=True)):
        clip = {"key": entry["key"]}
        for key, value in row.items():
            if isinstance(value, int | float | np.integer | np.floating) and np.isfinite(value):
                clip[key] = round(float(value), 4) if isinstance(value, float | np.floating) else int(value)
        if rtf is not None:
            clip["real_time_factor"] = round(float(rtf[i]), 4)
        out.append(clip)
    return out


def long_protocol(cfg, ckpts: list[str], inst: Instruments, corpus, turn_rows, minutes: float,
                  sessions: int, segment_seconds: float, characters: list[int] | None = None) -> dict:  # fmt: skip
    """Sessions of ``minutes`` for the first ``sessions`` held-out identities (or the held-out ``characters``
    named; a character's session — its script and seed — is the same whichever others run beside it). Besides
    the report, ``result["_sheets"]`` holds a contact sheet per session (the reference, then the middle frame of
    every segment) for :func:`run_protocol` to write."""
    from streamchar.data.shards import Corpus
    from streamchar.eval.instruments.mouth_probe import planned_mouth_open
    from streamchar.eval.metrics.statistics import frechet_block_sd, frechet_distance
    from streamchar.media import contact_sheet

    corpus = Corpus(corpus)
    entries = _heldout_clips(corpus, 10_000)
    sentences = [corpus.reader(e["shard"]).meta(e["key"])["transcript"] for e in entries]
    seconds = minutes * 60
    built: dict = {}  # char_id -> its Character
    held_out = list(dict.fromkeys(e["char_id"] for e in entries))
    if characters:
        unknown = [c for c in characters if c not in held_out]
        if unknown:
            raise ValueError(f"--characters {unknown} are not held-out identities of this corpus; choose among "
                             f"{held_out}.")  # fmt: skip
        order = [(held_out.index(c), c) for c in dict.fromkeys(characters)]
    else:
        order = list(enumerate(held_out[:sessions]))
    chars = [c for _, c in order]
    result = {
        "protocol": "long",
        "minutes": minutes,
        "segment_seconds": segment_seconds,
        "characters": chars,
        "models": {},
    }
    sheets: dict[str, np.ndarray] = {}
    per_frame = int(segment_seconds * cfg.timeline.fps)
    block = max(1, cfg.timeline.chunk_video_frames(1) // 2)  # one chunk of the every-second frames measured
    for spec in ckpts:
        ckpt = parse_ckpt(spec)
        if ckpt.driver is not None:
            raise ValueError(
                f"--ckpt {spec}: the long protocol speaks text; drivers are for the short protocol."
            )
        name, path, steps, switches = ckpt
        engine = engine_for(cfg, path, switches)
        segments: list[list[dict]] = []
        model: dict = {"sessions": []}
        for s, char_id in order:
            char = _character(corpus, char_id, turn_rows, built, cfg.video_codec.image_size)
            own = _character_features(inst, corpus, char_id)  # this character's ground-truth frames
            script = sentences[s:] + sentences[:s]
            logger.info("%s: a %.1f-minute session as character %d", name, minutes, char_id)
            generated, words = speak(
                engine, char, script * max(4, int(seconds)), steps, seed=s, max_seconds=seconds
            )
            frames, audio, phonemes, word_track = generated.arrays()
            bounds = np.cumsum([0, *map(len, generated.frames)])  # first frame of every chunk
            spf = engine.timeline.samples_per_video_frame
            rows = []
            for k, start in enumerate(range(0, len(frames) - per_frame + 1, per_frame)):
                stop = start + per_frame
                seg_words = np.unique(word_track[start:stop])
                first = {w: int(np.argmax(word_track == w)) for w in seg_words if w >= 0}
                text = " ".join(
                    words[w] for w in sorted(first) if start <= first[w] < stop and w < len(words)
                )
                ids = phonemes[start:stop]
                planned = [int(p) for j, p in enumerate(ids) if p != 0 and (j == 0 or ids[j - 1] != p)]
                row = measure(inst, frames[start:stop], audio[start * spf : stop * spf], text, char.image, char.voice,
                              planned_mouth_open(ids, engine.timeline.fps), phonemes=planned)  # fmt: skip
                feats = inst.identity.frechet_features(frames[start:stop:2])
                row["frechet"] = round(frechet_distance(feats, own), 5)
                row["frechet_sd"] = round(frechet_block_sd(feats, own, block), 5)
                chunk_lat = [
                    lat for lat, b in zip(generated.latencies, bounds[:-1], strict=True) if start <= b < stop
                ]
                row["chunk_latency_s"] = _latency(chunk_lat)
                row["segment"] = k
                rows.append(row)
                if len(segments) <= k:
                    segments.append([])
                segments[k].append(row)
            model["sessions"].append({"char_id": char_id, "stats": generated.stats, "segments": rows,
                                      "latencies": [round(x, 4) for x in generated.latencies]})  # fmt: skip
            middles = [frames[k * per_frame + per_frame // 2] for k in range(len(rows))]
            reference = np.asarray(char.image)
            shown = ([reference] if reference.shape == middles[0].shape else []) + middles
            captions = ["reference"] * (len(shown) - len(middles)) + [
                f"{(k + 0.5) * segment_seconds / 60:.1f} min" for k in range(len(middles))
            ]
            sheets[f"sheet_{name}_char{char_id}.png"] = contact_sheet(
                shown, columns=min(len(shown), 6), captions=captions
            )
        model["segments"] = [
            summarise(rows)
            | {
                "frechet": round(float(np.mean([r["frechet"] for r in rows])), 5),
                # a mean over sessions: its spread is the root of the mean variance over their count
                "frechet_sd": round(
                    float(np.sqrt(np.mean([r["frechet_sd"] ** 2 for r in rows]) / len(rows))), 5
                ),
                "start_s": k * segment_seconds,
            }
            for k, rows in enumerate(segments)
        ]
        if len(model["segments"]) >= 2:
            first, last = model["segments"][0], model["segments"][-1]
            model["drift"] = {}
            for key in ("identity_sim", "frechet", "sync_c", "wer", "voice_sim"):
                if key in first and key in last:
                    change = round((last[key] - first[key]) / abs(first[key]), 4) if first[key] else None
                    model["drift"][key] = {"first": first[key], "last": last[key], "change": change}
            # the change's own noise: two independent segments' spreads added in quadrature, relative to the first
            spread = np.hypot(first["frechet_sd"], last["frechet_sd"]) / abs(first["frechet"])
            model["drift"]["frechet"]["change_sd"] = round(float(spread), 4)
        result["models"][name] = model
    result["_sheets"] = sheets
    return result


def run_protocol(cfg, protocol: str, ckpts: list[str], out: str | Path, corpus: str | Path = "data/corpus",
                 eval_cache: str | Path = "data/eval_cache", instruments: str | Path = "checkpoints/eval",
                 turns: str | Path | None = None, clips: int = 24, minutes: float = 5.0, sessions: int = 1,
                 segment_seconds: float = 60.0, external: dict[str, str] | None = None,
                 skip_clips: int = 0, characters: list[int] | None = None) -> dict:  # fmt: skip
    """Run a protocol and write ``OUT/report.json``, ``OUT/report.md`` and plots (and, long protocol, a contact
    sheet per session)."""
    from PIL import Image

    from streamchar.engine.characters import read_turn_rows

    if protocol not in ("short", "long"):
        raise ValueError(f"Unknown protocol '{protocol}'; use short or long.")
    if protocol == "long" and minutes * 60 < 2 * segment_seconds:
        raise ValueError(f"A long session of {minutes:g} min has fewer than two {segment_seconds:g} s segments; "
                         "raise --minutes or lower --segment.")  # fmt: skip
    for spec in ckpts:
        parse_ckpt(spec)  # fail on bad input before loading anything
    inst = Instruments.load(instruments, external)
    turn_rows = read_turn_rows(turns) if turns else None
    if turn_rows is None:
        logger.warning(
            "no --turns table: characters speak without a voice prompt (the orchestrator's default tempo)"
        )
    if protocol == "short":
        result = short_protocol(cfg, ckpts, inst, corpus, turn_rows, eval_cache, clips, skip_clips)
    else:
        result = long_protocol(
            cfg, ckpts, inst, corpus, turn_rows, minutes, sessions, segment_seconds, characters
        )
    result["instruments"] = str(instruments)
    sheets = result.pop("_sheets", {})
    write_report(result, out)
    for filename, sheet in sheets.items():  # a contact sheet per long session: what its minutes look like
        Image.fromarray(sheet).save(Path(out) / filename)
    return result
