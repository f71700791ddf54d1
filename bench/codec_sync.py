"""Does the video codec keep what the sync expert reads? Held-out corpus clips scored by the sync expert on
their ground-truth frames and on the same frames encoded and decoded by the model's video codec, beside
their own audio.

    .venv/bin/python bench/codec_sync.py 001473-0 001545-0 [--model tiny] [--corpus data/corpus]

A clip whose generated rows have no sync while its codec reconstruction keeps it lost its mouth in the
generation (the priors or the DiT), not in the codec.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from streamchar.codecs.video import video_codec_from_config
from streamchar.config import load_config, model_overrides
from streamchar.data.shards import Corpus
from streamchar.eval.instruments.sync_expert import load_sync_expert, sync_scores_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("keys", nargs="+", help="corpus clip keys, e.g. 001473-0")
    parser.add_argument(
        "--model", default="tiny", help="shipped model name or model folder (its video codec)"
    )
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--instruments", default="checkpoints/eval")
    args = parser.parse_args()

    preset, parts = model_overrides(args.model)
    codec = video_codec_from_config(load_config(preset, parts)).eval()
    sync = load_sync_expert(f"{args.instruments}/sync")
    corpus = Corpus(args.corpus)
    entries = {e["key"]: e for e in corpus.entries()}
    missing = [k for k in args.keys if k not in entries]
    if missing:
        raise SystemExit(
            f"No clip '{missing[0]}' in {args.corpus}; give keys from its manifest (e.g. 001473-0)."
        )
    rows = {}
    for key in args.keys:
        clip = corpus.clip(entries[key])
        images = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.inference_mode():
            decoded = codec.decode_images(codec.encode_images(images)).clamp(-1, 1)
        rebuilt = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        truth, coded = (
            sync_scores_of(sync, clip.frames, clip.audio),
            sync_scores_of(sync, rebuilt, clip.audio),
        )
        rows[key] = {"ground_truth": {k: round(float(v), 3) for k, v in truth.items()},
                     "codec": {k: round(float(v), 3) for k, v in coded.items()},
                     "codec_psnr_db": round(float(10 * np.log10(255**2 / np.mean(
                         (rebuilt.astype(np.float64) - clip.frames) ** 2))), 2)}  # fmt: skip
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
