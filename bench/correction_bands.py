"""Which part of a residual student's video correction helps, and which part moves a long session?

``record`` runs ``streamchar eval protocol`` (its arguments after ``--``) and keeps, for every chunk a
session plays (the engine's warm-up session left out), the video latents it showed and the video prior's
means it refined, with the session each chunk belongs to. ``score`` decodes the means plus variants of that
correction, each measured the way the protocol measures frames (every second frame, the identity
instrument's Fréchet features):

- a short-protocol recording: all clips' frames against the held-out frames of the evaluation cache;
- a long-protocol recording of one character: each ``--segment`` seconds against that character's own frames,
  and the change first to last; and, segment by segment, the correction's size and direction.

The variants are the means alone, the correction as played, half of it, its spatial detail over 3 and 5
cells (:func:`~streamchar.denoiser.residual.correction_detail`, ``engine.video_correction_detail``) and its smooth
part (the correction minus its 5-cell detail), and for a long session the first segment's corrections replayed
over every later segment's means (is it the correction that changes, or what it is added to?). Only the
correction's share changes between rows: the same means, the same chunks. With ``--recorded-memory`` (the
recording's ``engine.video_correction_memory``), each chunk's own correction is recovered and re-averaged as the
engine would: the 3-cell detail with a session's first chunk not shown (``engine.video_correction_skip=1``), with
that memory and over the whole session so far (``engine.video_correction_time=session``). Record with the
settings the model plays (its ``model.json``; ``engine.video_correction_feedback=false`` makes each chunk's means
independent of the correction shown) except that the correction is recorded whole and from the first chunk,
averaged over chunks with a memory: ``engine.video_correction_detail=0 engine.video_correction_skip=0
engine.video_correction_time=mean engine.video_correction_memory=0.5``, and score with ``--recorded-memory 0.5``.

    AS_RECORDED="engine.video_correction_detail=0 engine.video_correction_skip=0 engine.video_correction_time=mean \\
        engine.video_correction_memory=0.5"
    .venv/bin/python bench/correction_bands.py record out/bands-dev.npz -- --protocol short --skip-clips 24 \\
        --model DIR --turns runs/orch-tiny/turns.jsonl --out out/bands-dev --ckpt s2=DIR/student-s2-2step $AS_RECORDED
    .venv/bin/python bench/correction_bands.py score out/bands-dev.npz --model DIR --recorded-memory 0.5
    .venv/bin/python bench/correction_bands.py record out/bands-c1.npz -- --protocol long --minutes 3 \\
        --characters 1 --model DIR --turns runs/orch-tiny/turns.jsonl --out out/bands-c1 \\
        --ckpt s2=DIR/student-s2-2step $AS_RECORDED
    .venv/bin/python bench/correction_bands.py score out/bands-c1.npz --model DIR --character 1 --recorded-memory 0.5
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def record(out: str, protocol_args: list[str]) -> None:
    """Run the protocol with a hook on what each chunk feeds back; save the played video and the means."""
    import streamchar.engine.session as session_module
    from streamchar.cli import main
    from streamchar.engine.engine import Engine

    played, means, sessions = [], [], []
    warming, current = [False], [-1]  # the session now running: a protocol runs them one after another
    fed_back, warm_up = session_module.fed_back, Engine.warm_up
    start = session_module.StreamSession.__init__

    def hooked_start(self, *args, **kwargs):
        start(self, *args, **kwargs)
        if not warming[0]:
            current[0] += 1

    def hooked_fed_back(video, mu_video, feedback):
        if mu_video is not None and not warming[0]:
            played.append(video[0].float().cpu().numpy().astype(np.float16))
            means.append(mu_video[0].float().cpu().numpy().astype(np.float16))
            sessions.append(current[0])
        return fed_back(video, mu_video, feedback)

    def hooked_warm_up(self, *args, **kwargs):
        warming[0] = True
        try:
            return warm_up(self, *args, **kwargs)
        finally:
            warming[0] = False

    session_module.fed_back, Engine.warm_up = hooked_fed_back, hooked_warm_up
    session_module.StreamSession.__init__ = hooked_start
    try:
        main(["eval", "protocol", *protocol_args])
    finally:
        session_module.fed_back, Engine.warm_up = fed_back, warm_up
        session_module.StreamSession.__init__ = start
        if played:
            np.savez_compressed(out, video=np.stack(played), mu=np.stack(means), session=np.array(sessions))
            print(f"recorded {len(played)} chunks of {current[0] + 1} sessions: {out}")


def variants(correction: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The shares of the correction ``[N, C, L, h, w]`` each row plays."""
    from streamchar.denoiser.residual import correction_detail

    detail5 = correction_detail(correction, 5, mask)
    return {
        "means alone": torch.zeros_like(correction),
        "as played": correction,
        "half": 0.5 * correction,
        "detail, 3 cells": correction_detail(correction, 3, mask),
        "detail, 5 cells": detail5,
        "smooth part (minus the 5-cell detail)": correction - detail5,
    }


def own_corrections(played: torch.Tensor, sessions: np.ndarray, memory: float) -> torch.Tensor:
    """Each chunk's own (frame-mean) correction, from corrections ``[N, C, L, h, w]`` recorded as played with
    ``engine.video_correction_time=mean`` and that ``memory``: ``played_k = m played_(k-1) + (1 - m) own_k``
    within a session, so ``own_k = (played_k - m played_(k-1)) / (1 - m)`` (a session's first chunk is its own)."""
    own = played.clone()
    for k in range(1, len(played)):
        if sessions[k] == sessions[k - 1]:
            own[k] = (played[k] - memory * played[k - 1]) / (1.0 - memory)
    return own


def averaged_variants(
    own: torch.Tensor, sessions: np.ndarray, mask: torch.Tensor | None, memory: float
) -> dict:
    """The 3-cell detail of the corrections as the engine averages them over chunks (:class:`~streamchar.denoiser.
    residual.VideoMean`), a session's first chunk not shown and counted as zero (``engine.video_correction_skip=1``):
    with the recording's ``memory``, and over all the session's chunks so far (``engine.video_correction_time=
    session``)."""
    from streamchar.denoiser.residual import VideoMean, correction_detail

    rows = {}
    for name, session in ((f"detail 3, first chunk skipped (memory {memory})", False),
                          ("detail 3, first chunk skipped, over the session", True)):  # fmt: skip
        out, running = torch.empty_like(own), None
        for k in range(len(own)):
            if k == 0 or sessions[k] != sessions[k - 1]:
                running, first = VideoMean(memory, session=session), True
            shown = running(torch.zeros_like(own[k : k + 1]) if first else own[k : k + 1])
            out[k], first = shown[0], False
        rows[name] = correction_detail(out, 3, mask)
    return rows


def score(path: str, model: str, character: int | None, segment_seconds: float, corpus: str,
          eval_cache: str, instruments: str, recorded_memory: float | None = None) -> None:  # fmt: skip
    from streamchar.config import load_config, model_overrides
    from streamchar.data.shards import Corpus
    from streamchar.denoiser.residual import video_correction_mask
    from streamchar.eval.metrics.statistics import frechet_distance
    from streamchar.eval.protocols.heldout import _character_features, _reference_features
    from streamchar.eval.protocols.measure import Instruments
    from streamchar.loaders import load_codecs

    preset, parts = model_overrides(model)
    cfg = load_config(preset, parts)
    codec, _ = load_codecs(cfg)
    inst = Instruments.load(instruments, {})
    data = np.load(path)
    played, mu = (torch.from_numpy(data[k].astype(np.float32)) for k in ("video", "mu"))
    e = cfg.engine
    mask = video_correction_mask(
        e.video_correction, e.mouth_box, tuple(mu.shape[-2:]), e.video_correction_margin
    )
    if character is None:
        reference, what = _reference_features(inst, eval_cache), "all clips against the held-out frames"
    else:
        reference, what = (
            _character_features(inst, Corpus(corpus), character),
            f"character {character}'s own frames",
        )
    per_segment = int(segment_seconds * cfg.timeline.fps)
    correction = played - mu
    shares = variants(correction, mask)
    if recorded_memory is not None:
        own = own_corrections(correction, data["session"], recorded_memory)
        shares |= averaged_variants(own, data["session"], mask, recorded_memory)
    print(f"{path}: {len(mu)} chunks; Fréchet distance of {what}")
    if character is not None:  # a long session: does the correction grow, or turn, from segment to segment?
        per_chunk = per_segment // mu.shape[2]
        pieces = correction[: len(correction) // per_chunk * per_chunk].split(per_chunk)
        cells = (mask > 0) if mask is not None else torch.ones(mu.shape[-2:], dtype=torch.bool)
        first = pieces[0].mean(0)[..., cells].flatten()
        for k, piece in enumerate(pieces):
            mean = piece.mean(0)[..., cells].flatten()
            print(
                f"  segment {k}: correction RMS {piece[..., cells].square().mean().sqrt():.4f} over the played cells,"
                f" its mean's cosine with the first segment's {torch.nn.functional.cosine_similarity(mean, first, 0):.2f}"
            )
        # the first segment's corrections replayed, in order, over every later chunk's means
        shares["the first segment's corrections, replayed"] = pieces[0].repeat(
            len(correction) // per_chunk + 1, 1, 1, 1, 1
        )[: len(correction)]
    for name, share in shares.items():
        frames = np.concatenate([codec.decode(chunk)[::2] for chunk in mu + share])
        if character is None:
            print(f"  {name:40s} {frechet_distance(inst.identity.frechet_features(frames), reference):.4f}")
            continue
        step = per_segment // 2  # frames were taken every second one
        figures = [frechet_distance(inst.identity.frechet_features(frames[s : s + step]), reference)
                   for s in range(0, len(frames) - step + 1, step)]  # fmt: skip
        change = 100 * (figures[-1] / figures[0] - 1)
        print(f"  {name:40s} " + " ".join(f"{f:.4f}" for f in figures) + f"   first to last {change:+.1f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "record", help="run a protocol, keeping each chunk's played video and video prior means"
    )
    r.add_argument("out", help="NPZ to write")
    r.add_argument(
        "protocol_args", nargs=argparse.REMAINDER, help="-- then `streamchar eval protocol` arguments"
    )
    s = sub.add_parser("score", help="Fréchet distance of the means plus each share of the correction")
    s.add_argument("recording", help="NPZ written by record")
    s.add_argument("--model", required=True, help="the model folder the recording played (its settings)")
    s.add_argument("--character", type=int, default=None, help="a long session's character (else: short)")
    s.add_argument("--segment", type=float, default=60.0, help="long: seconds per segment (default: 60)")
    s.add_argument("--corpus", default="data/corpus")
    s.add_argument("--eval-cache", default="data/eval_cache")
    s.add_argument("--instruments", default="checkpoints/eval")
    s.add_argument(
        "--recorded-memory",
        type=float,
        default=None,
        help="the engine.video_correction_memory the recording played (time=mean): adds the rows that re-average "
        "each chunk's own correction (first chunk skipped; over the session)",
    )
    args = p.parse_args()
    torch.set_grad_enabled(False)
    if args.command == "record":
        rest = args.protocol_args[1:] if args.protocol_args[:1] == ["--"] else args.protocol_args
        record(args.out, rest)
    else:
        score(args.recording, args.model, args.character, args.segment, args.corpus, args.eval_cache,
              args.instruments, args.recorded_memory)  # fmt: skip


if __name__ == "__main__":
    main()
