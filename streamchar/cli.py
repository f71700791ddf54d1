"""The ``streamchar`` command: thin wrappers over the packages.

Every command takes ``--config PRESET_OR_FILE`` and trailing ``key=value`` overrides, for example
``streamchar data synth --out data/corpus data.synth.num_characters=20``. Heavy imports happen
inside the handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("streamchar")


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _config(args: argparse.Namespace):
    from streamchar.config import load_config

    return load_config(args.config, args.overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name (tiny, base) or YAML file (default: tiny)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. timeline.fps=25")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# -- handlers -------------------------------------------------------------------------------------
def cmd_config_show(args: argparse.Namespace) -> None:
    from streamchar.config import to_yaml

    print(to_yaml(_config(args)), end="")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from streamchar.data.synth import synth_corpus

    cfg = _config(args)
    if args.workers is not None:
        cfg.data.synth.workers = args.workers
    summary = synth_corpus(cfg, args.out)
    _print_json(summary)


def cmd_data_preview(args: argparse.Namespace) -> None:
    from streamchar.data.preview import write_preview

    _print_json(write_preview(args.corpus, args.out, clips=args.clips))


def cmd_data_verify(args: argparse.Namespace) -> None:
    from streamchar.data.shards import Corpus
    from streamchar.data.verify import timing_truth

    result = timing_truth(Corpus(args.corpus), split=args.split, max_clips=args.max_clips)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _print_json(result)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from streamchar.data.prepare import prepare_corpus

    _print_json(prepare_corpus(_config(args), args.source, args.out))


def cmd_data_export(args: argparse.Namespace) -> None:
    from streamchar.data.prepare import export_videos

    _print_json(export_videos(args.corpus, args.out, split=args.split, max_clips=args.max_clips))


def cmd_data_encode(args: argparse.Namespace) -> None:
    from streamchar.data.latents import encode_corpus

    cfg = _config(args)
    if args.video_codec:
        cfg.video_codec.path = args.video_codec
    _print_json(encode_corpus(cfg, args.corpus, args.out))


def cmd_train_teacher(args: argparse.Namespace) -> None:
    from streamchar.training.teacher import train_teacher

    _print_json(train_teacher(_config(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_train_orchestrator(args: argparse.Namespace) -> None:
    from streamchar.training.orchestrator import train_orchestrator

    _print_json(train_orchestrator(_config(args), args.data, args.out, max_steps=args.max_steps))


def cmd_sample(args: argparse.Namespace) -> None:
    from streamchar.eval.teacher_samples import sample_clip

    cfg = _config(args)
    if args.video_codec:
        cfg.video_codec.path = args.video_codec
    summary = sample_clip(cfg, args.teacher, args.latents, args.out, clip=args.clip, mode=args.mode,
                          ref_image=args.ref_image, chunks=args.chunks)  # fmt: skip
    _print_json(summary)


def cmd_train_vae(args: argparse.Namespace) -> None:
    from streamchar.codecs.train_vae import train_vae

    cfg = _config(args)
    _print_json(train_vae(cfg, args.data, args.out, max_steps=args.max_steps))


def cmd_eval_orchestrator(args: argparse.Namespace) -> None:
    from streamchar.config import resolve_asset_path
    from streamchar.eval.orchestrator_eval import evaluate_orchestrator, write_report
    from streamchar.orchestrator.dataset import UnitLMDataset, collate_lm, read_turn_table
    from streamchar.orchestrator.model import load_unit_lm
    from streamchar.training.orchestrator import evaluate_lm

    cfg = _config(args)
    checkpoint = resolve_asset_path(args.checkpoint or cfg.orchestrator.path)
    result = evaluate_orchestrator(cfg, checkpoint, args.table, split=args.split, max_turns=args.max_turns,
                                   prompt_turns=args.prompt_turns)  # fmt: skip
    model, vocab, _ = load_unit_lm(checkpoint)
    heldout = UnitLMDataset(
        read_turn_table(args.table), args.split, vocab, cfg.train.orchestrator.max_tokens, seed=7919
    )
    batches = [collate_lm([heldout[i] for i in range(j, min(j + 16, len(heldout)))], vocab.pad)
               for j in range(0, len(heldout), 16)]  # fmt: skip
    teacher_forced = evaluate_lm(model, batches, vocab, "cpu", contextlib.nullcontext)
    if args.out:
        write_report(result, teacher_forced, args.out)
    _print_json({**result, "teacher_forced": teacher_forced})


def cmd_plan(args: argparse.Namespace) -> None:
    from streamchar.data.phonemes import PHONEMES
    from streamchar.orchestrator.session import Orchestrator

    cfg = _config(args)
    orch = Orchestrator.from_config(cfg, path=args.checkpoint)
    pieces = args.text.split(" ") if args.word_by_word else [args.text]
    for i, piece in enumerate(pieces):
        orch.push_text(piece + (" " if args.word_by_word else ""), final=i == len(pieces) - 1)
    size = orch.vocab.buckets.size
    for index in range(args.max_chunks):
        chunk = orch.next_chunk()
        frames = [
            "." if not s else f"{PHONEMES[u // size]}{'' if u % size == 0 else u % size}"
            for u, s in zip(chunk.units.tolist(), chunk.speaking.tolist(), strict=True)
        ]
        print(json.dumps({"chunk": index, "frames": frames, "pointer": chunk.pointer.tolist()[-1],
                          "held": int(chunk.held.sum()), "done": chunk.done}))  # fmt: skip
        if chunk.done:
            break


def cmd_codec_eval(args: argparse.Namespace) -> None:
    from streamchar.codecs.evaluate import evaluate_codecs

    cfg = _config(args)
    if args.video_codec:
        cfg.video_codec.path = args.video_codec
    result = evaluate_codecs(
        cfg, args.data, split=args.split, max_clips=args.max_clips, audio_only=args.audio_only
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _print_json(result)


def cmd_demo(args: argparse.Namespace) -> None:
    from streamchar.demo import run_demo

    _print_json(run_demo(_config(args), args.out))


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamchar",
        description="StreamChar: real-time streaming text-to-talking-character generation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # config
    p_config = sub.add_parser("config", help="inspect configs")
    config_sub = p_config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)

    # data
    p_data = sub.add_parser(
        "data", help="corpora: synthesise, preview, verify, prepare real clips, encode latents"
    )
    data_sub = p_data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = data_sub.add_parser(
        "synth",
        help="synthesise the talking-character corpus (resumable)",
        description="Synthesise the synthetic talking-character corpus into shards; re-running resumes.",
    )
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument(
        "--workers", type=int, default=None, help="processes (default: data.synth.workers, 0 = all cores)"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_data_synth)

    p = data_sub.add_parser("preview", help="contact sheet PNG and an mp4 with sound of a corpus")
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips", type=int, default=6, help="clips to show")
    p.set_defaults(func=cmd_data_preview)

    p = data_sub.add_parser(
        "verify", help="check ground truth against audio (mouth-energy r, phoneme silences)"
    )
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--split", default=None, help="train or test (default: all)")
    p.add_argument("--max-clips", type=int, default=None, help="check at most this many clips")
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.set_defaults(func=cmd_data_verify)

    p = data_sub.add_parser(
        "prepare",
        help="ingest a folder of real videos with transcripts into shards (resumable)",
        description="Each VIDEO (mp4, mkv, mov, webm, avi) needs VIDEO.txt (transcript) beside it and may "
        "have VIDEO.TextGrid (Montreal Forced Aligner). Bad clips are skipped and counted.",
    )
    p.add_argument("source", help="folder of videos")
    p.add_argument("--out", required=True, help="corpus folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_prepare)

    p = data_sub.add_parser(
        "export", help="write corpus clips as mp4 + transcript + TextGrid (the layout `data prepare` reads)"
    )
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default=None, help="train or test (default: all)")
    p.add_argument("--max-clips", type=int, default=None, help="export at most this many clips")
    p.set_defaults(func=cmd_data_export)

    p = data_sub.add_parser("encode", help="encode a corpus into the latent cache (resumable)")
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--out", required=True, help="latent cache folder")
    p.add_argument("--video-codec", default=None, help="trained video codec folder (sets video_codec.path)")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_encode)

    # train
    p_train = sub.add_parser("train", help="training")
    train_sub = p_train.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = train_sub.add_parser(
        "vae",
        help="train the video autoencoder on a corpus (resumable)",
        description="Train the video autoencoder with accelerate; re-running with the same --out resumes from the "
        "last checkpoint. The final codec is written to OUT/codec.",
    )
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, final codec)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train_vae)

    p = train_sub.add_parser(
        "teacher",
        help="train the joint audio-video DiT with flow matching on a latent cache (resumable)",
        description="Flow-matching training of the denoiser on windows of a latent cache (streamchar data encode). "
        "Runs on one process, or under `accelerate launch` with DDP or FSDP; re-running with the same --out "
        "resumes exactly (same data, noise, optimiser and EMA).",
    )
    p.add_argument("--latents", required=True, help="latent cache folder")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, curve.json)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train_teacher)

    p = train_sub.add_parser(
        "orchestrator",
        help="train the unit language model (transcript -> frame units) on a corpus (resumable)",
        description="Builds RUN/turns.jsonl from the corpus's phoneme timings once, then trains the causal LM that "
        "plans one unit (phoneme x F0 bucket) per audio frame. Re-running with the same --out resumes; the "
        "result is exported to RUN/final as a plain Hugging Face model + tokenizer (set orchestrator.path to it).",
    )
    p.add_argument("--data", required=True, help="corpus folder (streamchar data synth / prepare)")
    p.add_argument("--out", required=True, help="run folder (turn table, checkpoints, curve, final/)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train_orchestrator)

    # codec
    # eval
    p_eval = sub.add_parser("eval", help="evaluation protocols")
    eval_sub = p_eval.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = eval_sub.add_parser(
        "orchestrator",
        help="duration and frame accuracy of the orchestrator on held-out turns; time per chunk",
        description="Runs the orchestrator (greedy, whole transcript, voice prompt: the two longest turns of the same "
        "character in other clips) on every held-out turn of a turn table (RUN/turns.jsonl from "
        "`streamchar train orchestrator`).",
    )
    p.add_argument("--table", required=True, help="turn table (RUN/turns.jsonl)")
    p.add_argument("--checkpoint", default=None, help="orchestrator folder (default: orchestrator.path)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--max-turns", type=int, default=0, help="evaluate only the first N turns (0 = all)")
    p.add_argument("--prompt-turns", type=int, default=2,
                   help="voice prompt: this many of the character's longest turns from other clips (0 = none)")  # fmt: skip
    p.add_argument(
        "--out", default=None, help="write OUT.json and OUT.md (e.g. docs/results/orchestrator_eval)"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_orchestrator)

    p = sub.add_parser(
        "plan",
        help="run the orchestrator on a text and print each chunk's frames (phoneme+F0 bucket, '.' = listening)",
    )
    p.add_argument("--text", required=True, help="what the character says")
    p.add_argument("--checkpoint", default=None, help="orchestrator folder (default: orchestrator.path)")
    p.add_argument("--word-by-word", action="store_true", help="push the text one word at a time")
    p.add_argument("--max-chunks", type=int, default=200, help="stop after this many chunks")
    _add_config_args(p)
    p.set_defaults(func=cmd_plan)

    p_codec = sub.add_parser("codec", help="codec evaluation")
    codec_sub = p_codec.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = codec_sub.add_parser("eval", help="video PSNR on held-out identities; mel round-trip distances")
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--video-codec", default=None, help="trained video codec folder")
    p.add_argument("--split", default="test", help="split to evaluate (default: test = held-out identities)")
    p.add_argument("--max-clips", type=int, default=24, help="clips to evaluate")
    p.add_argument("--audio-only", action="store_true", help="evaluate only the audio codec")
    p.add_argument("--json", default=None, help="also write the result to this file")
    _add_config_args(p)
    p.set_defaults(func=cmd_codec_eval)

    # demo
    p = sub.add_parser(
        "sample",
        help="regenerate a held-out clip with the teacher: mp4 with sound and a contact sheet",
        description="Drive the teacher with a held-out clip's ground-truth audio conditions, chunk after chunk with "
        "the window memory, decode, and write OUT/sample.mp4 (generated | ground truth), OUT/contact_sheet.png "
        "and OUT/sample.json.",
    )
    p.add_argument("--teacher", required=True, help="teacher run folder or checkpoint folder")
    p.add_argument("--latents", required=True, help="latent cache the clip comes from")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clip", default=None, help="clip key (default: the first held-out speaking clip)")
    p.add_argument("--mode", default="joint", choices=["joint", "audio"],
                   help="joint: text -> speech + video; audio: the clip's speech given, video generated")  # fmt: skip
    p.add_argument(
        "--ref-image", default=None, help="a square PNG/JPEG reference image (default: another clip)"
    )
    p.add_argument("--chunks", type=int, default=None, help="number of chunks (default: the whole clip)")
    p.add_argument("--video-codec", default=None, help="video codec folder (sets video_codec.path)")
    _add_config_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="the demo behind `make demo`")
    p.add_argument("--out", default="out/demo", help="output folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # overrides may also follow options (`data encode CORPUS --out DIR key=value`), which argparse
    # alone leaves unrecognised once the positionals are consumed
    args, extra = parser.parse_known_args(argv)
    stray = [arg for arg in extra if "=" not in arg or arg.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from streamchar.config import ConfigError
    from streamchar.data.espeak import EspeakError
    from streamchar.data.shards import CorpusError
    from streamchar.media import MediaError

    start = time.perf_counter()
    try:
        args.func(args)
    except (
        CLIError,
        ConfigError,
        CorpusError,
        MediaError,
        EspeakError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
    ) as err:
        if args.verbose:
            raise
        print(f"streamchar: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamchar: interrupted; completed work is kept and a re-run resumes.", file=sys.stderr)
        return 130
    logger.debug("done in %.1fs", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
