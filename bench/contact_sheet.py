"""A contact sheet of one long text session: a frame every ``--every`` chunks, side by side, to see drift.

    .venv/bin/python bench/contact_sheet.py --out drift.png [key=value ...]

``key=value`` are config overrides on the shipped model (e.g. ``engine.refine=false`` for the priors alone,
``prior.video_path=runs/prior-video-tune/final``). The text is one sentence repeated, so the session lasts
about a minute and a quarter; the first frame is chunk 0.
"""

from __future__ import annotations

import argparse

SENTENCE = "The small boat drifted slowly along the quiet river while the birds sang in the tall trees."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--model", default="tiny", help="shipped model name or model folder")
    parser.add_argument("--every", type=int, default=25, help="chunks between frames")
    parser.add_argument("--frames", type=int, default=7, help="frames on the sheet")
    parser.add_argument("--repeat", type=int, default=14, help="times the sentence is said")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    from PIL import Image

    from streamchar.config import load_config, model_overrides
    from streamchar.engine.engine import Engine
    from streamchar.media import contact_sheet

    preset, parts = model_overrides(args.model)
    engine = Engine.from_config(load_config(preset, parts + args.overrides))
    kept = []
    with engine.session(decode_overlap=False, seed=1) as session:
        session.push_text(" ".join([SENTENCE] * args.repeat), final=True)
        for index, chunk in enumerate(session):
            if index % args.every == 0:
                kept.append(chunk.frames[0])
            if len(kept) == args.frames:
                break
    Image.fromarray(contact_sheet(kept)).save(args.out)
    print(f"{args.out}: {len(kept)} frames, one every {args.every} chunks")


if __name__ == "__main__":
    main()
