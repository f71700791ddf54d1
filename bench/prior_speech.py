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
from streamchar.data.phonemes import SILENCE_ID, F0Buckets
from streamchar.eval.encoders import load_speaker_encoder
from streamchar.eval.recognizer import edit_distance, load_recognizer, normalise_words
from streamchar.eval.teacher_samples import reference_for
from streamchar.loaders import load_prior


def spoken_phonemes(units: torch.Tensor) -> list[int]:
    """Frame units -> the phoneme sequence they spell (silence dropped, repeats merged)."""
    out: list[int] = []
    for p in (units.long() // F0Buckets().size).tolist():
        if p != SILENCE_ID and (not out or out[-1] != p):
            out.append(p)
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prior", default="checkpoints/tiny/prior-audio", help="acoustic prior (run or folder)"
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
    prior = load_prior(args.prior, "audio")
    codec = build_audio_codec(cfg, tl)
    recognizer = load_recognizer(f"{args.instruments}/recognizer", words=True)
    speaker = load_speaker_encoder(f"{args.instruments}/speaker")
    entries = [e for e in cache.entries(args.split) if cache.tensor(e, "speaking").sum() > 0][: args.clips]
    rows = ("ground_truth", "prior", "prior_offline", "prior_other_voice")
    counts = {r: {"phoneme_edits": 0, "word_edits": 0, "voice": []} for r in rows}
    phonemes = words = 0
    for i, entry in enumerate(entries):
        units, speaking = cache.tensor(entry, "units").long(), cache.tensor(entry, "speaking").long()
        _, voice, valid, _ = reference_for(cache, entry, tl)
        other = entries[(i + len(entries) // 2) % len(entries)]
        if other["char_id"] == entry["char_id"]:
            other = next(e for e in entries if e["char_id"] != entry["char_id"])
        _, other_voice, other_valid, _ = reference_for(cache, other, tl)
        own_voice = codec.decode(voice[0][valid[0]].float()).numpy()
        reference, text = spoken_phonemes(units), cache.meta(entry)["transcript"]
        phonemes, words = phonemes + len(reference), words + len(normalise_words(text))
        latents = {
            "ground_truth": cache.tensor(entry, "audio").float(),
            "prior": streamed_means(prior, units, speaking, voice, valid, tl.chunk_audio_tokens),
            "prior_offline": prior(*prior.pad_context(units[None], speaking[None]), voice, valid)[0, prior.context :],
            "prior_other_voice": streamed_means(prior, units, speaking, other_voice, other_valid, tl.chunk_audio_tokens),
        }  # fmt: skip
        for row, lat in latents.items():
            wave = codec.decode(lat.detach().float()).numpy()
            said = [p for p in recognizer.phonemes(wave) if p != SILENCE_ID]
            counts[row]["phoneme_edits"] += edit_distance(reference, said)
            heard = recognizer.lexicon.decode(said, recognizer.word_penalty)
            counts[row]["word_edits"] += edit_distance(normalise_words(text), heard)
            counts[row]["voice"].append(float(speaker.embed_audio(wave) @ speaker.embed_audio(own_voice)))
    result = {"prior": args.prior, "split": args.split, "clips": len(entries), "phonemes": phonemes, "words": words,
              "rows": {r: {"per": round(c["phoneme_edits"] / max(1, phonemes), 4),
                           "wer": round(c["word_edits"] / max(1, words), 4),
                           "voice_sim": round(float(np.mean(c["voice"])), 4)} for r, c in counts.items()}}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
