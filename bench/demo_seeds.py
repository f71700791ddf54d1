"""How much of `make demo`'s WER is the session's seed? The demo text said over several seeds, per setting.

`make demo` speaks one text with one seed (``engine.seed``), so its WER is one draw of the student's sampling
noise, in steps of one word. This renders the demo's monologue (``streamchar.demo.TEXT``, the
character ``ada``) with session seeds 0..N-1 for each ``--row`` (a name and its ``key=value`` settings over the
model's own) and prints what the evaluation recognizer hears for each, the WER's mean and standard error over the
seeds, and espeak-ng's WER on the same text in the character's voice (the demo's ceiling).

    .venv/bin/python bench/demo_seeds.py --seeds 8 --row default --row "priors_alone engine.refine=false" \\
        --row "noise_as_trained engine.audio_noise_scale=1.0"
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="tiny", help="a shipped model by name or a model folder (default: tiny)"
    )
    p.add_argument("--seeds", type=int, default=8, help="session seeds 0..N-1 per row (default: 8)")
    p.add_argument(
        "--row",
        action="append",
        default=None,
        help='"NAME [key=value ...]": a row and its settings over the model\'s (repeatable; default: the model as shipped)',
    )
    args = p.parse_args()
    if args.seeds < 1:
        p.error("--seeds must be 1 or more.")
    import torch

    from streamchar.config import load_config, model_overrides
    from streamchar.demo import TEXT, judge
    from streamchar.engine.engine import Engine
    from streamchar.engine.render import render_text
    from streamchar.eval.metrics.error_rates import normalise_words

    torch.set_grad_enabled(False)
    preset, parts = model_overrides(args.model)
    rows = [shlex.split(row) for row in (args.row or ["default"])]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, *settings in rows:
            cfg = load_config(preset, parts + settings)
            engine = Engine.from_config(cfg)
            ada = engine.character("ada")
            wers, espeak = [], None
            for seed in range(args.seeds):
                video = Path(tmp) / f"{name}-{seed}.mp4"
                render_text(engine, ada, TEXT, video, seed=seed)
                judged = judge(cfg, video, ada, TEXT)
                if judged is None:
                    raise SystemExit(
                        "No evaluation instruments (checkpoints/eval): nothing can judge the demo."
                    )
                wers.append(100 * judged["wer"])
                espeak = judged.get("wer_espeak")
                print(f'{name} seed {seed}: WER {wers[-1]:.1f} % "{judged["heard"]}"', flush=True)
            w = np.array(wers)
            se = w.std(ddof=1) / np.sqrt(len(w)) if len(w) > 1 else float("nan")
            summary.append(
                f"{name:24s} WER {w.mean():5.1f} % ± {se:.1f} (seeds: {', '.join(f'{x:.0f}' for x in w)})"
            )
            if espeak is not None:
                summary[-1] += f"; espeak {100 * espeak:.0f} %"
    words = len(normalise_words(TEXT))
    print(
        f'\nThe demo text ("{TEXT}": {words} words, one is {100 / words:.1f} points), {args.seeds} seeds per row:'
    )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
