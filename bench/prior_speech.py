"""How intelligible, and in whose voice, is the acoustic prior's speech? Held-out clips, ground-truth units.

Each clip of a latent cache (held-out identities and sentences by default) is spoken by the acoustic prior
chunk after chunk, as the engine streams it (each chunk's window: the units before it, then its own; no
look-ahead), from the clip's own frame-aligned units and a reference voice from another clip of the same
character. The evaluation instruments read the speech decoded by the mel codec: PER against the units'
phonemes (silence dropped, repeats merged), WER through the recognizer's lexicon against the transcript, and
voice similarity to the reference voice. Rows, pooled over the clips and measured side by side:

- ``ground_truth``: the clip's own latents through the codec (the ceiling);
- ``prior``: the streamed prior;
- ``prior_offline``: one pass over the whole clip (every frame sees the whole clip: what chunking costs);
- ``prior_other_voice``: the streamed prior given another character's reference (voice similarity is then
  measured against the clip's own speaker: the voice must come from the reference).

    .venv/bin/python bench/prior_speech.py --prior runs/prior-audio --clips 48
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from streamchar.codecs.audio import build_audio_codec
from streamchar.config import load_config
from streamchar.data.latents import LatentCache
from streamchar.data.phonemes import SILENCE_ID
from streamchar.eval.instruments.encoders import load_speaker_encoder
from streamchar.eval.instruments.recognizer import load_recognizer
from streamchar.eval.metrics.error_rates import edit_distance, normalise_words
from streamchar.eval.metrics.features import clip_phoneme_ids
from streamchar.loaders import load_prior


@torch.no_grad()
def streamed_means(prior, units, speaking, voice, valid, chunk: int) -> torch.Tensor:
    """The prior's means of a whole clip ``[T, D_a]``, chunk after chunk with ``prior.context`` units before."""
    padded_units, padded_speaking = prior.pad_context(units[None], speaking[None])
    out = []
    for start in range(0, len(units), chunk):
        stop = min(start + chunk, len(units))
        window = slice(start, stop + prior.context)
        out.append(prior.chunk_mean(padded_units[:, window], padded_speaking[:, window], voice, valid)[0])
    return torch.cat(out)


def reference_voice(cache: LatentCache, entry: dict, tl) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, R, D_a]`` voice latents (and valid mask) from another clip of the same character: its first
    speaking tokens."""
    peers = [
        e
        for e in cache.entries(audio_only=True)
        if e["char_id"] == entry["char_id"] and e["key"] != entry["key"]
    ]
    ref = peers[0] if peers else entry
    R = tl.reference_voice_tokens
    speaking = cache.tensor(ref, "speaking")
    first = int(speaking.nonzero()[0]) if speaking.any() else 0
    start = max(0, min(first, ref["audio_tokens"] - R))
    voice = cache.slice(ref, "audio", start, min(ref["audio_tokens"], start + R)).float()
    padded, valid = torch.zeros(1, R, voice.shape[-1]), torch.zeros(1, R, dtype=torch.bool)
    padded[0, : len(voice)], valid[0, : len(voice)] = voice, True
    return padded, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="acoustic prior (run or folder); repeat to compare (default: the shipped one)",
    )
    parser.add_argument("--latents", default="data/latents", help="latent cache")
    parser.add_argument("--instruments", default="checkpoints/eval", help="evaluation instruments folder")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--clips", type=int, default=48, help="the first N speaking clips of the split")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()

    cfg = load_config("tiny")
    cache = LatentCache(args.latents)
    tl = cache.window_timeline(cfg.timeline)
    specs = [
        tuple(p.split("=", 1)) if "=" in p else ("prior", p)
        for p in args.prior or ["checkpoints/tiny/prior-audio"]
    ]
    priors = {name: load_prior(path, "audio") for name, path in specs}
    codec = build_audio_codec(cfg, tl)
    recognizer = load_recognizer(f"{args.instruments}/recognizer", words=True)
    speaker = load_speaker_encoder(f"{args.instruments}/speaker")
    entries = [e for e in cache.entries(args.split, audio_only=True) if cache.tensor(e, "speaking").sum() > 0]
    entries = entries[: args.clips]
    rows = ["ground_truth", *(f"{n}{suffix}" for n in priors for suffix in ("", "_offline", "_other_voice"))]
    counts = {r: {"phoneme_edits": 0, "word_edits": 0, "voice": []} for r in rows}
    phonemes = words = 0
    for i, entry in enumerate(entries):
        units, speaking = cache.tensor(entry, "units").long(), cache.tensor(entry, "speaking").long()
        voice, valid = reference_voice(cache, entry, tl)
        other = entries[(i + len(entries) // 2) % len(entries)]
        if other["char_id"] == entry["char_id"]:
            other = next(e for e in entries if e["char_id"] != entry["char_id"])
        other_voice, other_valid = reference_voice(cache, other, tl)
        own_voice = codec.decode(voice[0][valid[0]].float()).numpy()
        reference, text = clip_phoneme_ids(cache.meta(entry)), cache.meta(entry)["transcript"]
        phonemes, words = phonemes + len(reference), words + len(normalise_words(text))
        latents = {"ground_truth": cache.tensor(entry, "audio").float()}
        for n, prior in priors.items():
            padded = prior.pad_context(units[None], speaking[None])
            with torch.no_grad():
                latents[n] = streamed_means(prior, units, speaking, voice, valid, tl.chunk_audio_tokens)
                latents[f"{n}_offline"] = prior(*padded, voice, valid)[0, prior.context :]
                latents[f"{n}_other_voice"] = streamed_means(
                    prior, units, speaking, other_voice, other_valid, tl.chunk_audio_tokens
                )
        for row, lat in latents.items():
            wave = codec.decode(lat.detach().float()).numpy()
            said = [p for p in recognizer.phonemes(wave) if p != SILENCE_ID]
            counts[row]["phoneme_edits"] += edit_distance(reference, said)
            heard = recognizer.lexicon.decode(said, recognizer.word_penalty)
            counts[row]["word_edits"] += edit_distance(normalise_words(text), heard)
            counts[row]["voice"].append(float(speaker.embed_audio(wave) @ speaker.embed_audio(own_voice)))
    result = {"priors": dict(specs), "split": args.split, "clips": len(entries), "phonemes": phonemes,
              "identities": len({e["char_id"] for e in entries}), "words": words,
              "rows": {r: {"per": round(c["phoneme_edits"] / max(1, phonemes), 4),
                           "wer": round(c["word_edits"] / max(1, words), 4),
                           "voice_sim": round(float(np.mean(c["voice"])), 4)} for r, c in counts.items()}}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
