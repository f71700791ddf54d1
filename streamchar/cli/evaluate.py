"""``streamchar eval``: protocols over checkpoints, the instruments, the orchestrator; ``plan`` (what the
orchestrator plans for a text) and ``codec eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamchar.cli.arguments import CONFIG, CORPUS, arg, command, group, out
from streamchar.cli.common import CLIError, load, print_json, video_codec, write_json

INSTRUMENTS = arg(
    "--instruments", default="checkpoints/eval", help="trained instruments (default: checkpoints/eval)"
)
EVAL_CACHE = arg("--cache", default="data/eval_cache", help="evaluation cache (default: data/eval_cache)")
ORCHESTRATOR = arg("--checkpoint", default=None, help="orchestrator folder (default: orchestrator.path)")
PUBLISHED = (("whisper", "Whisper folder (WER)"), ("syncnet", "official SyncNet syncnet_v2.model"),
             ("wavlm", "WavLM speaker-verification folder"), ("arcface", "ArcFace ONNX file (extra eval)"),
             ("inception", "FID Inception TorchScript"), ("i3d", "FVD I3D TorchScript"))  # fmt: skip


def published_models(p: argparse.ArgumentParser) -> None:
    """``--whisper``, ``--syncnet``, ...: paths of the published models the protocol may also score with."""
    published = p.add_argument_group("published models, from local paths (optional; nothing is downloaded)")
    for name, what in PUBLISHED:
        published.add_argument(f"--{name}", default=None, metavar="PATH", help=what)


def char_ids(text: str) -> list[int]:
    """``--characters 71`` or ``1,17,71`` -> character ids."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of character ids, e.g. 1,17,71."
        ) from None


PROTOCOL = (
    arg("--protocol", choices=["short", "long"], required=True,
        help="short: one held-out sentence per held-out identity; long: sessions of --minutes each"),
    arg("--ckpt", action="append", default=[], metavar="[NAME=]PATH[@STEPS][:FLAG]",
        help="denoiser folder (teacher or distilled student) to evaluate, with ablations :nosink, "
        ":nomotion, :norealign, :prioronly (the priors alone), :keepall (all of the student's correction "
        "of the priors' means) and, short protocol, audio-driven rows :cascade (espeak-ng speech of the "
        "text) or :speech (the clip's own speech); repeat to compare"),
    arg("--corpus", default="data/corpus", help="corpus with the held-out identities (default: data/corpus)"),
    arg("--eval-cache", default="data/eval_cache", help="evaluation cache (default: data/eval_cache)"),
    INSTRUMENTS, arg("--turns", default=None, help="orchestrator turn table for voice prompts (RUN/turns.jsonl)"),
    arg("--clips", type=int, default=24, help="short: held-out clips (default: 24, one per identity)"),
    arg("--skip-clips", type=int, default=0,
        help="short: skip the first N held-out clips, e.g. 24 to choose settings on clips the default table "
             "does not report (a development set)"),
    arg("--minutes", type=float, default=5.0, help="long: session length in minutes (default: 5)"),
    arg("--sessions", type=int, default=1, help="long: sessions (held-out identities) per checkpoint"),
    arg("--characters", type=char_ids, default=None, metavar="ID[,ID...]",
        help="long: the held-out identities to run (instead of the first --sessions); each keeps the script and "
             "seed it has in the full order, so its session is the one a longer run gives it"),
    arg("--segment", type=float, default=60.0, help="long: seconds per reported segment (default: 60)"),
    out("output folder (default: docs/results/eval_PROTOCOL)", optional=True), published_models, CONFIG,
)  # fmt: skip


def cmd_eval_protocol(args: argparse.Namespace) -> None:
    """Evaluates checkpoints on held-out identities and sentences with the instruments of checkpoints/eval;
    writes OUT/report.json, OUT/report.md and PNG plots."""
    if args.protocol is None:
        raise CLIError(
            "Give --protocol short|long with --ckpt PATH, or a subcommand (see `streamchar eval --help`)."
        )
    if not args.ckpt:
        raise CLIError(
            "Give at least one --ckpt (a teacher or student folder, e.g. checkpoints/tiny/student-s2-2step)."
        )
    from streamchar.eval.protocols.heldout import run_protocol

    published = {name: getattr(args, name) for name, _ in PUBLISHED}
    cfg = load(args)
    out = Path(args.out or f"docs/results/eval_{args.protocol}")
    run_protocol(cfg, args.protocol, args.ckpt, out, corpus=args.corpus, eval_cache=args.eval_cache,
                 instruments=args.instruments, turns=args.turns, clips=args.clips, minutes=args.minutes,
                 sessions=args.sessions, segment_seconds=args.segment, external=published,
                 skip_clips=args.skip_clips, characters=args.characters)  # fmt: skip
    print(f"report: {out / 'report.md'} (JSON: {out / 'report.json'}, plots: {out}/*.png)")


def cmd_eval_cache(args: argparse.Namespace) -> None:
    from streamchar.eval.metrics.features import build_eval_cache

    out = build_eval_cache(args.corpus, args.out, args.max_clips)
    print(f"evaluation cache: {out}")


def cmd_eval_train(args: argparse.Namespace) -> None:
    from streamchar.eval.instruments.train import INSTRUMENTS, train_instrument

    names = INSTRUMENTS if args.instrument == "all" else (args.instrument,)
    for name in names:
        scores = train_instrument(name, args.cache, args.root, args.steps, args.runs)
        print(f"{name}: {json.dumps(scores)} -> {Path(args.root) / name}")


def cmd_eval_prove(args: argparse.Namespace) -> None:
    from streamchar.eval.protocols.proofs import prove_instruments

    prove_instruments(args.cache, args.root, args.out, args.heldout_voices)
    print(f"report: {args.out}.md, {args.out}.json, {args.out}.png")


def cmd_eval_unseen(args: argparse.Namespace) -> None:
    """Speaks a fixed set of public-domain sentences (the Rainbow Passage, Project Gutenberg books) as a
    shipped character through the engine, and has espeak-ng say them in the character's corpus voice; the
    recognizer's PER of both, and the words outside its lexicon and outside the corpus, go to OUT/report.json
    and OUT/report.md."""
    from streamchar.eval.protocols.unseen import unseen_protocol

    result = unseen_protocol(load(args), args.ckpt, args.character, args.instruments, args.out, args.turns)
    print((Path(args.out) / "report.md").read_text())
    print_json({k: result[k] for k in ("per_gap", "out_of_lexicon", "never_in_corpus")})


def cmd_eval_orchestrator(args: argparse.Namespace) -> None:
    """Runs the orchestrator (greedy, whole transcript, voice prompt: the two longest turns of the same
    character in other clips) on every held-out turn of a turn table (RUN/turns.jsonl from `streamchar train
    orchestrator`)."""
    from streamchar.eval.protocols.orchestrator import judge_orchestrator

    print_json(judge_orchestrator(load(args), args.checkpoint, args.table, split=args.split,
                                  max_turns=args.max_turns, prompt_turns=args.prompt_turns, out=args.out))  # fmt: skip


def cmd_plan(args: argparse.Namespace) -> None:
    from streamchar.loaders import load_orchestrator
    from streamchar.orchestrator.plan import plan_text

    for chunk in plan_text(
        load_orchestrator(load(args), args.checkpoint), args.text, args.word_by_word, args.max_chunks
    ):
        print(json.dumps(chunk))


def cmd_codec_eval(args: argparse.Namespace) -> None:
    from streamchar.eval.protocols.codecs import evaluate_codecs

    result = evaluate_codecs(
        load(args, *video_codec(args)),
        args.data,
        split=args.split,
        max_clips=args.max_clips,
        audio_only=args.audio_only,
    )
    if args.json:
        write_json(args.json, result)
    print_json(result)


def register(sub) -> None:
    eval_sub = group(
        sub, "eval",
        help="evaluation: protocols over checkpoints (--protocol), instruments (cache, train, prove), orchestrator",
        description="`streamchar eval --protocol short|long --ckpt PATH` evaluates checkpoints with the trained "
        "instruments of checkpoints/eval (build them with `eval cache`, `eval train`, check them with `eval prove`).",
    )  # fmt: skip
    command(
        eval_sub, "protocol", cmd_eval_protocol,
        "judge checkpoints: `streamchar eval --protocol short|long --ckpt PATH ...` (the same command)", *PROTOCOL,
    )  # fmt: skip
    command(
        eval_sub, "cache", cmd_eval_cache, "compute the instruments' views (log-mel, mouth windows, faces) of a corpus",
        CORPUS, out("cache folder (default: data/eval_cache)", default="data/eval_cache"),
        arg("--max-clips", type=int, default=0, help="only the first N clips of each split (0 = all)"),
    )  # fmt: skip
    command(
        eval_sub, "train", cmd_eval_train, "train an evaluation instrument on the cache's ground truth",
        arg("instrument", choices=["recognizer", "sync", "identity", "speaker", "mouth", "all"]), EVAL_CACHE,
        arg("--root", default="checkpoints/eval", help="where instruments are saved (default: checkpoints/eval)"),
        arg("--runs", default="runs/eval", help="resumable training checkpoints (default: runs/eval)"),
        arg("--steps", type=int, default=None, help="training steps (default: per instrument)"),
    )  # fmt: skip
    command(
        eval_sub, "prove", cmd_eval_prove, "measure every instrument on held-out ground truth (report + plots)",
        EVAL_CACHE, arg("--root", default="checkpoints/eval", help="instrument folder (default: checkpoints/eval)"),
        arg("--heldout-voices", type=int, default=60, help="utterances by voices not in the corpus"),
        out("writes OUT.json, OUT.md, OUT.png", default="docs/results/eval_instruments"),
    )  # fmt: skip
    command(
        eval_sub, "unseen", cmd_eval_unseen,
        "public-domain sentences the corpus never saw, spoken by a held-out character, against espeak-ng",
        arg("--ckpt", required=True, metavar="[NAME=]PATH[@STEPS][:FLAG]", help="denoiser folder to speak"),
        arg("--character", default="cleo", help="shipped character (default: cleo, a held-out identity)"),
        INSTRUMENTS, arg("--turns", default=None, help="orchestrator turn table (RUN/turns.jsonl): counts unseen words"),
        out("output folder (default: docs/results/unseen)", default="docs/results/unseen"), CONFIG,
    )  # fmt: skip
    command(
        eval_sub, "orchestrator", cmd_eval_orchestrator,
        "duration and frame accuracy of the orchestrator on held-out turns; time per chunk",
        arg("--table", required=True, help="turn table (RUN/turns.jsonl)"), ORCHESTRATOR,
        arg("--split", default="test", help="split to evaluate (default: test)"),
        arg("--max-turns", type=int, default=0, help="evaluate only the first N turns (0 = all)"),
        arg("--prompt-turns", type=int, default=2,
            help="voice prompt: this many of the character's longest turns from other clips (0 = none)"),
        out("write OUT.json and OUT.md (e.g. docs/results/orchestrator_eval)", optional=True), CONFIG,
    )  # fmt: skip
    command(
        sub, "plan", cmd_plan,
        "run the orchestrator on a text and print each chunk's frames (phoneme+F0 bucket, '.' = listening)",
        arg("--text", required=True, help="what the character says"), ORCHESTRATOR,
        arg("--word-by-word", action="store_true", help="push the text one word at a time"),
        arg("--max-chunks", type=int, default=200, help="stop after this many chunks"), CONFIG,
    )  # fmt: skip
    codec_sub = group(sub, "codec", help="codec evaluation")
    command(
        codec_sub, "eval", cmd_codec_eval, "video PSNR on held-out identities; mel round-trip distances",
        arg("--data", required=True, help="corpus folder"),
        arg("--video-codec", default=None, help="trained video codec folder"),
        arg("--split", default="test", help="split to evaluate (default: test = held-out identities)"),
        arg("--max-clips", type=int, default=24, help="clips to evaluate"),
        arg("--audio-only", action="store_true", help="evaluate only the audio codec"),
        arg("--json", default=None, help="also write the result to this file"), CONFIG,
    )  # fmt: skip
