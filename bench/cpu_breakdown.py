"""Where a chunk's time goes on this machine: one text session of the shipped model, run with decode overlap
off (every part in turn, on the same thread), each part timed by wrapping the method that does it.

    .venv/bin/python bench/cpu_breakdown.py [--model tiny] [--text "..."] [key=value ...]

Prints each part's seconds and its share of the media it made (a real-time-factor contribution). With decode
overlap on, the engine runs denoising and decoding on two threads, so the session's real-time factor is below
the sum; the shares say which part to make cheaper.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the green hills beyond the river."


def timed(owner, name: str, label: str, totals: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``totals[label]``."""
    inner: Callable = getattr(owner, name)
    totals.setdefault(label, 0.0)  # printed in the order registered

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="shipped model name or model folder")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides to try")
    args = parser.parse_args()

    from streamchar.codecs.audio import MelDecoderStream
    from streamchar.config import load_config, model_overrides
    from streamchar.denoiser.flow import EulerSampler
    from streamchar.engine import session as session_module
    from streamchar.engine.decode import LocalDecoder
    from streamchar.engine.engine import Engine
    from streamchar.engine.realign import Realigner
    from streamchar.engine.session import StreamSession

    preset, parts = model_overrides(args.model)
    engine = Engine.from_config(load_config(preset, parts + args.overrides))
    with engine.session(decode_overlap=False, seed=1) as session:  # warm-up
        session.push_text("Hello there.", final=True)
        list(session)
    totals: dict[str, float] = {}
    timed(StreamSession, "_denoise_next", "denoising, all of it", totals)
    timed(StreamSession, "_plan", "  orchestrator plan + pointer realignment", totals)
    timed(session_module, "prior_means", "  priors", totals)  # the module-level function the session calls
    timed(EulerSampler, "sample", "  DiT sampling", totals)
    timed(LocalDecoder, "decode_on_device", "decoding, video and audio", totals)
    timed(MelDecoderStream, "decode", "  audio (Griffin-Lim)", totals)
    timed(Realigner, "read", "phoneme reader", totals)
    start = time.perf_counter()
    with engine.session(decode_overlap=False, seed=1) as session:
        session.push_text(args.text, final=True)
        chunks = list(session)
    wall = time.perf_counter() - start
    media = sum(c.timing.duration for c in chunks)
    print(
        f"{len(chunks)} chunks, {media:.2f} s of media in {wall:.2f} s: {wall / media:.3f} x media, decode overlap off"
    )
    for label, seconds in totals.items():
        print(f"{label:44s} {seconds:6.2f} s  {seconds / media:.3f} x media")


if __name__ == "__main__":
    main()
