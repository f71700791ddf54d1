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
    from streamchar.config import load_config, model_overrides

    if getattr(args, "model_name", None):
        preset, parts = model_overrides(args.model_name)
        return load_config(args.config or preset, parts + list(args.overrides))
    return load_config(args.config or "tiny", args.overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="preset name (tiny, base) or YAML file (default: tiny)")
    if "--model" not in p._option_string_actions:  # distill compare|drift use --model for their contenders
        what = "a shipped model by name (tiny) or a model folder: sets the codec, orchestrator, denoiser, characters"
        p.add_argument("--model", dest="model_name", default=None, metavar="NAME|DIR", help=what)
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


def cmd_distill_stage1(args: argparse.Namespace) -> None:
    from streamchar.distill.stage1 import distill_stage1

    _print_json(distill_stage1(_config(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_distill_stage2(args: argparse.Namespace) -> None:
    from streamchar.distill.stage2 import distill_stage2

    _print_json(distill_stage2(_config(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_distill_toy(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from streamchar.distill.toy import ToyConfig, run_toy

    cfg = ToyConfig(student_steps=args.student_steps, seed=args.seed)
    result = run_toy(cfg, args.out)
    _print_json({"config": asdict(cfg), "samplers": result["samplers"], "out": args.out})


def cmd_distill_compare(args: argparse.Namespace) -> None:
    from streamchar.eval.distill_eval import compare_samplers, parse_contenders

    cfg = _config(args)
    result = compare_samplers(cfg, parse_contenders(args.model, cfg), args.latents, args.out, args.windows)
    print(f"wrote {args.out}/compare.json, compare.md, compare_sheet.png")
    _print_json(result["samplers"])


def cmd_distill_drift(args: argparse.Namespace) -> None:
    from streamchar.eval.distill_eval import drift_session, parse_contenders

    cfg = _config(args)
    result = drift_session(
        cfg, parse_contenders(args.model, cfg), args.latents, args.out, args.chunks, args.segment
    )
    print(f"wrote {args.out}/drift.json, drift.md, drift.png")
    _print_json(result["segments"])


def cmd_train_teacher(args: argparse.Namespace) -> None:
    from streamchar.training.teacher import train_teacher

    _print_json(train_teacher(_config(args), args.latents, args.out, max_steps=args.max_steps))


def cmd_train_prior(args: argparse.Namespace) -> None:
    from streamchar.training.prior import train_prior

    _print_json(train_prior(_config(args), args.which, args.latents, args.out, max_steps=args.max_steps))


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


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=["short", "long"], required=True,
                   help="short: one held-out sentence per held-out identity; long: sessions of --minutes each")  # fmt: skip
    p.add_argument("--ckpt", action="append", default=[], metavar="[NAME=]PATH[@STEPS][:FLAG]",
                   help="denoiser folder (teacher or distilled student) to evaluate, with ablations :nosink, "
                   ":nomotion, :norealign, :prioronly (the priors alone) and, short protocol, audio-driven "
                   "rows :cascade (espeak-ng speech of the text) or :speech (the clip's own speech); repeat to "
                   "compare")  # fmt: skip
    p.add_argument(
        "--corpus", default="data/corpus", help="corpus with the held-out identities (default: data/corpus)"
    )
    p.add_argument(
        "--eval-cache", default="data/eval_cache", help="evaluation cache (default: data/eval_cache)"
    )
    p.add_argument(
        "--instruments", default="checkpoints/eval", help="trained instruments (default: checkpoints/eval)"
    )
    p.add_argument(
        "--turns", default=None, help="orchestrator turn table for voice prompts (RUN/turns.jsonl)"
    )
    p.add_argument(
        "--clips", type=int, default=24, help="short: held-out clips (default: 24, one per identity)"
    )
    p.add_argument("--minutes", type=float, default=5.0, help="long: session length in minutes (default: 5)")
    p.add_argument(
        "--sessions", type=int, default=1, help="long: sessions (held-out identities) per checkpoint"
    )
    p.add_argument(
        "--segment", type=float, default=60.0, help="long: seconds per reported segment (default: 60)"
    )
    p.add_argument("--out", default=None, help="output folder (default: docs/results/eval_PROTOCOL)")
    published = p.add_argument_group("published models, from local paths (optional; nothing is downloaded)")
    for name, what in (("whisper", "Whisper folder (WER)"), ("syncnet", "official SyncNet syncnet_v2.model"),
                       ("wavlm", "WavLM speaker-verification folder"), ("arcface", "ArcFace ONNX file (extra eval)"),
                       ("inception", "FID Inception TorchScript"), ("i3d", "FVD I3D TorchScript")):  # fmt: skip
        published.add_argument(f"--{name}", default=None, metavar="PATH", help=what)
    _add_config_args(p)


def cmd_eval_unseen(args: argparse.Namespace) -> None:
    from streamchar.eval.unseen import unseen_protocol

    result = unseen_protocol(_config(args), args.ckpt, args.character, args.instruments, args.out, args.turns)
    print((Path(args.out) / "report.md").read_text())
    _print_json({k: result[k] for k in ("per_gap", "out_of_lexicon", "never_in_corpus")})


def cmd_eval_protocol(args: argparse.Namespace) -> None:
    if args.protocol is None:
        raise CLIError(
            "Give --protocol short|long with --ckpt PATH, or a subcommand (see `streamchar eval --help`)."
        )
    if not args.ckpt:
        raise CLIError(
            "Give at least one --ckpt (a teacher or student folder, e.g. checkpoints/tiny/student-s2-2step)."
        )
    from streamchar.eval.protocol import run_protocol

    published = {k: getattr(args, k) for k in ("whisper", "syncnet", "wavlm", "arcface", "inception", "i3d")}
    cfg = _config(args)
    out = Path(args.out or f"docs/results/eval_{args.protocol}")
    run_protocol(cfg, args.protocol, args.ckpt, out, corpus=args.corpus, eval_cache=args.eval_cache,
                 instruments=args.instruments, turns=args.turns, clips=args.clips, minutes=args.minutes,
                 sessions=args.sessions, segment_seconds=args.segment, external=published)  # fmt: skip
    print(f"report: {out / 'report.md'} (JSON: {out / 'report.json'}, plots: {out}/*.png)")


def cmd_eval_cache(args: argparse.Namespace) -> None:
    from streamchar.eval.features import build_eval_cache

    out = build_eval_cache(args.corpus, args.out, args.max_clips)
    print(f"evaluation cache: {out}")


def cmd_eval_train(args: argparse.Namespace) -> None:
    from streamchar.eval.suite import INSTRUMENTS, train_instrument

    names = INSTRUMENTS if args.instrument == "all" else (args.instrument,)
    for name in names:
        scores = train_instrument(name, args.cache, args.root, args.steps, args.runs)
        print(f"{name}: {json.dumps(scores)} -> {Path(args.root) / name}")


def cmd_eval_prove(args: argparse.Namespace) -> None:
    from streamchar.eval.suite import prove_instruments

    prove_instruments(args.cache, args.root, args.out, args.heldout_voices)
    print(f"report: {args.out}.md, {args.out}.json, {args.out}.png")


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


def _engine(args: argparse.Namespace, cfg, with_orchestrator: bool = True):
    from streamchar.engine.session import Engine

    if getattr(args, "steps", None):
        cfg.engine.steps = args.steps
    if getattr(args, "no_overlap", False):
        cfg.engine.decode_overlap = False
    return Engine.from_config(cfg, getattr(args, "denoiser", None), with_orchestrator=with_orchestrator)


def _characters(args: argparse.Namespace, engine, count: int) -> list:
    """Shipped characters (``--character``, else the default and the next ones), with ``--image`` and
    ``--voice`` replacing their images and voices in order."""
    from streamchar.engine.characters import list_characters

    ecfg = engine.cfg.engine
    names = list(args.character or [])
    shipped = [ecfg.character] + [n for n in list_characters(ecfg.characters_dir) if n != ecfg.character]
    names += [n for n in shipped if n not in names][: max(0, count - len(names))]
    images, voices = list(args.image or []), list(args.voice or [])
    if len(images) > count or len(voices) > count or len(names) > count:
        raise CLIError(
            f"This render plays {count} character(s); give at most {count} --image/--voice/--character."
        )
    characters = []
    for i in range(count):
        character = engine.character(names[i])
        if i < len(images):
            character = character.with_image(images[i], engine.video_codec.image_size)
        if i < len(voices):
            character = character.with_voice(voices[i], engine.timeline.sample_rate)
        characters.append(character)
    return characters


def cmd_generate(args: argparse.Namespace) -> None:
    from streamchar.engine.render import parse_dialogue, render_audio, render_dialogue, render_text
    from streamchar.media import load_audio

    sources = [x for x in (args.text, args.text_file, args.audio, args.dialogue) if x is not None]
    if len(sources) != 1:
        raise CLIError("Give exactly one of --text, --text-file, --audio or --dialogue.")
    cfg = _config(args)
    engine = _engine(args, cfg, with_orchestrator=args.audio is None)
    if args.dialogue is not None:
        characters = _characters(args, engine, 2)
        lines = parse_dialogue(_read_text(args.dialogue))
        summary = render_dialogue(engine, characters, lines, args.out)
    elif args.audio is not None:
        (character,) = _characters(args, engine, 1)
        speech = load_audio(args.audio, engine.timeline.sample_rate)
        summary = render_audio(engine, character, speech, args.out)
    else:
        (character,) = _characters(args, engine, 1)
        text = args.text if args.text is not None else _read_text(args.text_file)
        summary = render_text(engine, character, text, args.out)
    for name, voice in zip(summary["characters"], summary["voices"], strict=True):
        print(f"{name}: voice {voice}", file=sys.stderr)
    _print_json(summary)


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    if not Path(path).is_file():
        raise CLIError(f"{path} does not exist; pass a UTF-8 text file.")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CLIError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8.") from err


def _serve(app, cfg) -> None:
    import uvicorn

    scfg = cfg.serve
    if scfg.host not in ("127.0.0.1", "localhost", "::1") and not scfg.token:
        logger.warning("serving on %s without a token: anyone who can reach it can start sessions", scfg.host)
    suffix = f"?token={scfg.token}" if scfg.token else ""
    print(f"StreamChar: open http://{scfg.host}:{scfg.port}/{suffix}", file=sys.stderr)
    uvicorn.run(app, host=scfg.host, port=scfg.port, log_level="warning",
                ws_max_size=2 * scfg.max_message_bytes)  # fmt: skip


def _serve_overrides(args: argparse.Namespace, cfg) -> None:
    if args.host:
        cfg.serve.host = args.host
    if args.port:
        cfg.serve.port = args.port
    if args.token:
        cfg.serve.token = args.token


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from streamchar.serve.app import create_app
    except ImportError as err:
        raise CLIError(
            f"streamchar serve needs the serve extra ({err.name} is missing): pip install 'streamchar[serve]'."
        ) from err
    cfg = _config(args)
    _serve_overrides(args, cfg)
    _serve(create_app(_engine(args, cfg)), cfg)


def cmd_stream(args: argparse.Namespace) -> None:
    from streamchar.serve.app import create_app, text_feed

    cfg = _config(args)
    _serve_overrides(args, cfg)
    cfg.serve.max_sessions = 1
    if args.text is not None:
        lines = [args.text]
    elif args.text_file not in (None, "-"):
        lines = _read_text(args.text_file).splitlines()
    else:
        print("StreamChar: type lines for the character to say (Ctrl-D ends)", file=sys.stderr)
        lines = sys.stdin
    if args.character:
        cfg.engine.character = args.character[0]
    engine = _engine(args, cfg)
    app = create_app(engine, feed=text_feed(lines, word_seconds=args.word_seconds))
    suffix = ("&token=" + cfg.serve.token) if cfg.serve.token else ""
    print(f"StreamChar: the live session starts when a client opens http://{cfg.serve.host}:{cfg.serve.port}/"
          f"?autostart=1{suffix} (or connects to ws://{cfg.serve.host}:{cfg.serve.port}/ws)", file=sys.stderr)  # fmt: skip
    _serve(app, cfg)


def cmd_bench_stream(args: argparse.Namespace) -> None:
    from streamchar.engine.bench import bench_stream, format_table

    cfg = _config(args)
    options = dict(steps=args.steps, chunks=args.chunks, overlap=args.overlap, presets=args.preset,
                   random_init=args.random_init, ablate=args.ablate, profile=args.profile)  # fmt: skip
    if args.split and args.preset:
        raise SystemExit("streamchar: error: --split runs the --config preset; leave out --preset.")
    result = bench_stream(cfg, **options)
    if args.split:
        from streamchar.engine.disagg import run_split

        single = {r["steps"]: r for r in result["rows"] if r["row"] == "all on" and r["overlap"]}
        split = run_split(cfg, _bench_split, options, random_init=args.random_init)
        for row in split["rows"]:
            row["row"] = "decoders on rank 1"
            if row["steps"] in single:
                row["rtf_single_over_split"] = round(
                    single[row["steps"]]["real_time_factor"] / row["real_time_factor"], 3
                )
        result["rows"] += split["rows"]
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def _bench_split(engine, options: dict) -> dict:
    """Rank 0 of ``bench stream --split``: the overlap-on rows with the decoders on the other rank."""
    from streamchar.engine.bench import bench_stream

    split = {**options, "overlap": "on", "ablate": False, "profile": None, "presets": None}
    return bench_stream(engine.cfg, **split, engine=engine)


def cmd_data_export_character(args: argparse.Namespace) -> None:
    from streamchar.engine.characters import export_character

    _print_json(
        export_character(args.corpus, args.turns, args.char_id, args.out, voice_seconds=args.voice_seconds)
    )


def cmd_recipe(args: argparse.Namespace) -> None:
    from streamchar.recipe import Recipe, describe_plan, plan, run_recipe

    recipe = Recipe.load(args.recipe, args.root)
    if args.list:
        print(describe_plan(plan(recipe)))
        return
    start = time.perf_counter()
    rows = run_recipe(recipe, only=args.only, until=args.until, force=args.force)
    print(describe_plan(rows))
    print(f"this invocation: {(time.perf_counter() - start) / 60:.1f} min")


def cmd_demo(args: argparse.Namespace) -> None:
    from streamchar.demo import describe, run_demo

    if args.model_name is None and args.config is None:
        args.model_name = "tiny"  # the shipped model, unless a config says otherwise
    print(describe(run_demo(_config(args), args.out)))


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

    p = data_sub.add_parser(
        "export-character",
        help="a character folder (image.png, voice.wav, prompt.json) from a corpus character",
        description="Writes the first frame of the character's first monologue, the first seconds of its speech and "
        "its longest turns (the orchestrator's voice prompt) from a turn table (RUN/turns.jsonl).",
    )
    p.add_argument("corpus", help="corpus folder")
    p.add_argument(
        "--turns", required=True, help="turn table (RUN/turns.jsonl of `streamchar train orchestrator`)"
    )
    p.add_argument("--char-id", type=int, required=True, help="the character's char_id in corpus.json")
    p.add_argument("--out", required=True, help="character folder to write")
    p.add_argument("--voice-seconds", type=float, default=3.0, help="seconds of reference voice")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_export_character)

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
        "prior",
        help="train the acoustic or the video prior (regression) on a latent cache (resumable)",
        description="Regression training of a prior the DiT refines (DESIGN.md section 7): --which audio maps a "
        "chunk's units, speaking flag and reference voice to its audio latents (L1); --which video maps the "
        "reference latent, the last motion latent and the chunk's audio to its video latents (MSE, weighted on the "
        "mouth), reading the trained acoustic prior at prior.audio_path. Re-running with the same --out resumes; "
        "the EMA weights are exported to OUT/final (set prior.audio_path / prior.video_path to it).",
    )
    p.add_argument("--which", required=True, choices=("audio", "video"), help="which prior")
    p.add_argument("--latents", required=True, help="latent cache folder (streamchar data encode)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, curve, final/)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train_prior)

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

    # distill
    p_distill = sub.add_parser("distill", help="two-stage distillation of the teacher into few-step students")
    distill_sub = p_distill.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = distill_sub.add_parser(
        "stage1",
        help="sampler compression: teacher ODE pairs, regression, then DMD on single windows (resumable)",
        description="Generates teacher ODE pairs (distill.pairs, resumable shards in distill.pairs_dir or OUT/pairs), "
        "regresses a student initialised as the teacher onto them, then trains it with DMD (real score: the "
        "teacher with guidance; fake score trained online) to distill.student_steps steps with guidance folded "
        "in. Runs under `accelerate launch` with DDP (or FSDP with distill.fsdp=true); re-running with the same "
        "--out resumes. The student is exported to OUT/student.",
    )
    p.add_argument("--latents", required=True, help="latent cache folder")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_distill_stage1)
    p = distill_sub.add_parser(
        "stage2",
        help="rollout fine-tuning: DMD on chunks the student generates from its own motion frames and sink",
        description="Starts from a stage-1 student (distill.init=RUN/student) or the teacher itself "
        "(distill.init=TEACHER); each step rolls out distill.rollout_chunks consecutive chunks per session with the "
        "student's own sink and motion frames, "
        "gradients through the last denoising step of each chunk only. Resumable; exports OUT/student.",
    )
    p.add_argument("--latents", required=True, help="latent cache folder")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in this invocation"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_distill_stage2)
    p = distill_sub.add_parser(
        "toy",
        help="DMD on a 2D Gaussian mixture: teacher, one-step student, per-mode mass and MMD",
        description="Trains a flow-matching teacher on an 8-mode 2D mixture, distils a one-step student with the "
        "same DMD losses, and reports each sampler against the teacher's many-step samples (OUT/toy.json, toy.png).",
    )
    p.add_argument("--out", default="docs/results/distill_toy", help="output folder")
    p.add_argument("--student-steps", type=int, default=3000, help="DMD updates of the student")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_distill_toy)
    model_help = ("NAME=PATH[@STEPS][:nosink]: a teacher (guided with the sample config, at STEPS) or a student "
                  "(its own steps, guidance folded); repeat")  # fmt: skip
    p = distill_sub.add_parser(
        "compare",
        help="students against the many-step teacher on the same held-out windows and noise, timed side by side",
        description="Writes OUT/compare.json, compare.md and compare_sheet.png (ground truth, then one row per model).",
    )
    p.add_argument("--latents", required=True, help="latent cache folder")
    p.add_argument("--model", action="append", required=True, help=model_help)
    p.add_argument("--windows", type=int, default=8, help="held-out windows")
    p.add_argument("--out", default="docs/results/distill_stage1", help="output folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_distill_compare)
    p = distill_sub.add_parser(
        "drift",
        help="a long session per model: distance to the reference identity and quality proxies per chunk",
        description="Writes OUT/drift.json, drift.md and drift.png.",
    )
    p.add_argument("--latents", required=True, help="latent cache folder")
    p.add_argument("--model", action="append", required=True, help=model_help)
    p.add_argument("--chunks", type=int, default=60, help="session length in chunks")
    p.add_argument("--segment", type=int, default=10, help="chunks per reported segment")
    p.add_argument("--out", default="docs/results/distill_drift", help="output folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_distill_drift)

    # eval
    p_eval = sub.add_parser(
        "eval",
        help="evaluation: protocols over checkpoints (--protocol), instruments (cache, train, prove), orchestrator",
        description="`streamchar eval --protocol short|long --ckpt PATH` evaluates checkpoints with the trained "
        "instruments of checkpoints/eval (build them with `eval cache`, `eval train`, check them with `eval prove`).",
    )
    eval_sub = p_eval.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = eval_sub.add_parser(
        "protocol",
        help="judge checkpoints: `streamchar eval --protocol short|long --ckpt PATH ...` (the same command)",
        description="Evaluates checkpoints on held-out identities and sentences with the instruments of "
        "checkpoints/eval; writes OUT/report.json, OUT/report.md and PNG plots.",
    )
    _add_protocol_args(p)
    p.set_defaults(func=cmd_eval_protocol)
    p = eval_sub.add_parser(
        "cache", help="compute the instruments' views (log-mel, mouth windows, faces) of a corpus"
    )
    p.add_argument("corpus", help="corpus folder")
    p.add_argument("--out", default="data/eval_cache", help="cache folder (default: data/eval_cache)")
    p.add_argument("--max-clips", type=int, default=0, help="only the first N clips of each split (0 = all)")
    p.set_defaults(func=cmd_eval_cache)
    p = eval_sub.add_parser("train", help="train an evaluation instrument on the cache's ground truth")
    p.add_argument("instrument", choices=["recognizer", "sync", "identity", "speaker", "mouth", "all"])
    p.add_argument("--cache", default="data/eval_cache", help="evaluation cache (default: data/eval_cache)")
    p.add_argument(
        "--root", default="checkpoints/eval", help="where instruments are saved (default: checkpoints/eval)"
    )
    p.add_argument("--runs", default="runs/eval", help="resumable training checkpoints (default: runs/eval)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: per instrument)")
    p.set_defaults(func=cmd_eval_train)
    p = eval_sub.add_parser(
        "prove", help="measure every instrument on held-out ground truth (report + plots)"
    )
    p.add_argument("--cache", default="data/eval_cache", help="evaluation cache (default: data/eval_cache)")
    p.add_argument("--root", default="checkpoints/eval", help="instrument folder (default: checkpoints/eval)")
    p.add_argument("--heldout-voices", type=int, default=60, help="utterances by voices not in the corpus")
    p.add_argument("--out", default="docs/results/eval_instruments", help="writes OUT.json, OUT.md, OUT.png")
    p.set_defaults(func=cmd_eval_prove)
    p = eval_sub.add_parser(
        "unseen",
        help="public-domain sentences the corpus never saw, spoken by a held-out character, against espeak-ng",
        description="Speaks a fixed set of public-domain sentences (the Rainbow Passage, Project Gutenberg books) as a "
        "shipped character through the engine, and has espeak-ng say them in the character's corpus voice; the "
        "recognizer's PER of both, and the words outside its lexicon and outside the corpus, go to "
        "OUT/report.json and OUT/report.md.",
    )
    p.add_argument(
        "--ckpt", required=True, metavar="[NAME=]PATH[@STEPS][:FLAG]", help="denoiser folder to speak"
    )
    p.add_argument(
        "--character", default="cleo", help="shipped character (default: cleo, a held-out identity)"
    )
    p.add_argument(
        "--instruments", default="checkpoints/eval", help="trained instruments (default: checkpoints/eval)"
    )
    p.add_argument(
        "--turns", default=None, help="orchestrator turn table (RUN/turns.jsonl): counts unseen words"
    )
    p.add_argument(
        "--out", default="docs/results/unseen", help="output folder (default: docs/results/unseen)"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_unseen)
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

    # engine
    p = sub.add_parser(
        "generate",
        help="a talking-character mp4 (H.264 + AAC) from text, a dialogue script, or given speech",
        description="Runs a streaming session as fast as the machine allows and writes every chunk to OUT. Without "
        "--image/--voice the shipped character (engine.character) is used; its name and voice are printed.",
    )
    p.add_argument("--image", action="append", help="square PNG/JPEG reference image (twice for --dialogue)")
    p.add_argument(
        "--voice", action="append", help="a few seconds of the voice, any audio file (twice for --dialogue)"
    )
    p.add_argument(
        "--character", action="append", help="a shipped character name or folder (twice for --dialogue)"
    )
    p.add_argument("--text", default=None, help="what the character says")
    p.add_argument(
        "--text-file", default=None, help="UTF-8 text file with what the character says ('-' = stdin)"
    )
    p.add_argument(
        "--audio", default=None, help="speech that drives the character instead of text (audio-driven)"
    )
    p.add_argument(
        "--dialogue", default=None, help="script of 'A: text' / 'B: text' lines for two characters"
    )
    p.add_argument("--out", required=True, help="output mp4")
    p.add_argument(
        "--steps", type=int, default=None, help="denoising steps per chunk (default: engine.steps)"
    )
    p.add_argument("--denoiser", default=None, help="denoiser checkpoint (default: engine.denoiser_path)")
    p.add_argument(
        "--no-overlap", action="store_true", help="decode after each chunk instead of beside the next"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_generate)

    for name in ("serve", "stream"):
        if name == "serve":
            p = sub.add_parser(
                "serve", help="the live web app: a page and one WebSocket per session (extra: serve)",
                description="FastAPI app on serve.host:serve.port (127.0.0.1:8000). Open / in a browser, pick or upload "
                "a character, type text or use the microphone. The WebSocket protocol is in the README.",
            )  # fmt: skip
        else:
            p = sub.add_parser(
                "stream", help="one live session, its text from --text/--text-file/stdin, played to a WebSocket client",
                description="Serves one session: when a client connects (the page with ?autostart=1, or any client of "
                "/ws), each line of text is pushed word by word as it is read, and chunks stream live.",
            )  # fmt: skip
            p.add_argument("--text", default=None, help="what the character says")
            p.add_argument("--text-file", default=None, help="lines to say ('-' or none = stdin, as typed)")
            p.add_argument("--character", action="append", help="shipped character name or folder")
            p.add_argument("--word-seconds", type=float, default=0.15, help="pause between pushed words")
        p.add_argument("--host", default=None, help="bind address (default: serve.host = 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default: serve.port = 8000)")
        p.add_argument("--token", default=None, help="require this bearer token (default: serve.token)")
        p.add_argument(
            "--steps", type=int, default=None, help="denoising steps per chunk (default: engine.steps)"
        )
        p.add_argument("--denoiser", default=None, help="denoiser checkpoint (default: engine.denoiser_path)")
        _add_config_args(p)
        p.set_defaults(func=cmd_serve if name == "serve" else cmd_stream)

    p_bench = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bench_sub = p_bench.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = bench_sub.add_parser(
        "stream",
        help="time to first frame, chunk latency p50/p95/p99, real-time factor, deadline misses, text-to-speech latency",
        description="For each preset and step count, runs a session with decode overlap on and off, side by side, with "
        "text pushed before the start and again mid-session; prints a table and optionally saves JSON.",
    )
    p.add_argument(
        "--preset", action="append", default=None, help="preset(s) to run (default: the --config one)"
    )
    p.add_argument(
        "--steps", type=int, nargs="+", default=[1, 2, 4, 32], help="step counts (default: 1 2 4 32)"
    )
    p.add_argument("--chunks", type=int, default=16, help="chunks per run (default: 16)")
    p.add_argument("--overlap", choices=["both", "on", "off"], default="both", help="decode overlap runs")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random weights for every component (time a preset whose weights you do not have, e.g. base)",
    )
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also one row per fast-path optimisation switched off alone (first step count)",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="also run with the decoders in a second process (the second GPU with two; gloo on a CPU)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="profile a few chunks: DIR/trace.json (Chrome trace) and DIR/profile.md (time per stage)",
    )
    p.add_argument("--json", default=None, help="also write the result here")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_stream)
    # sampling and the demo
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

    p = sub.add_parser(
        "recipe",
        help="the reference pipeline from corpus to shipped, evaluated model (resumable)",
        description="Runs corpus -> vae -> latents -> priors (audio, video, video tuned on noisy last frames) -> teacher -> "
        "orchestrator -> instruments -> stage 1 (2, 1, 4 steps) -> stage 2 -> ship -> results, skipping each stage "
        "whose output is present, valid and built from unchanged inputs; an interrupted recipe resumes. Uses a GPU "
        "when there is one. Prints each stage's wall time and the total.",
    )
    p.add_argument(
        "recipe", nargs="?", default="tiny", help="recipe name (configs/recipes/NAME.yaml) or YAML file"
    )
    p.add_argument("--root", default=None, help="prefix for the recipe's relative folders (default: here)")
    p.add_argument(
        "--only", action="append", default=None, metavar="STAGE", help="run only this stage (repeat)"
    )
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument(
        "--force", action="store_true", help="run the chosen stages even when their output is done"
    )
    p.add_argument(
        "--list", action="store_true", help="print each stage's status and recorded time, run nothing"
    )
    p.set_defaults(func=cmd_recipe)

    p = sub.add_parser(
        "demo",
        help="the demo behind `make demo`: a shipped character speaks with the 2-step student",
        description="Writes OUT (default out/demo.mp4), OUT-dialogue.mp4 (two characters) and OUT.json, and prints "
        "the real-time factor and time to first frame of each. Uses --model tiny unless --model or --config is given.",
    )
    p.add_argument("--out", default="out/demo.mp4", help="the mp4 to write (default: out/demo.mp4)")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "eval" and argv[1].startswith("--") and argv[1] != "--help":
        argv.insert(
            1, "protocol"
        )  # `streamchar eval --protocol ...` is `streamchar eval protocol --protocol ...`
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
    from streamchar.recipe import RecipeError

    start = time.perf_counter()
    try:
        args.func(args)
    except (
        CLIError,
        ConfigError,
        CorpusError,
        MediaError,
        EspeakError,
        RecipeError,
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
