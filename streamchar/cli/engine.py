"""``streamchar generate``, ``serve``, ``stream``, ``bench stream`` and ``sample`` (the teacher regenerating a
held-out clip)."""

from __future__ import annotations

import argparse
import logging
import sys

from streamchar.cli.arguments import CONFIG, arg, command, group, out
from streamchar.cli.common import CLIError, load, print_json, read_text, setting, video_codec, write_json

logger = logging.getLogger("streamchar")


def engine_settings(args: argparse.Namespace) -> list[str]:
    """The overrides of ``--steps`` and ``--no-overlap``."""
    steps = [setting("engine.steps", args.steps)] if getattr(args, "steps", None) else []
    return steps + ([setting("engine.decode_overlap", False)] if getattr(args, "no_overlap", False) else [])


def serve_settings(args: argparse.Namespace) -> list[str]:
    """The overrides of ``--host``, ``--port`` and ``--token``."""
    flags = {"serve.host": args.host, "serve.port": args.port, "serve.token": args.token}
    return [setting(key, value) for key, value in flags.items() if value]


def _engine(args: argparse.Namespace, cfg, with_orchestrator: bool = True):
    from streamchar.engine.engine import Engine

    return Engine.from_config(cfg, getattr(args, "denoiser", None), with_orchestrator=with_orchestrator)


def _cast(args: argparse.Namespace, engine, count: int) -> list:
    """Shipped characters (``--character``, else the default and the next ones), with ``--image`` and
    ``--voice`` replacing their images and voices in order."""
    from streamchar.engine.cast import cast_characters

    return cast_characters(engine, count, args.character, args.image, args.voice)


def cmd_generate(args: argparse.Namespace) -> None:
    """Runs a streaming session as fast as the machine allows and writes every chunk to OUT. Without
    --image/--voice the shipped character (engine.character) is used; its name and voice are printed."""
    from streamchar.engine.render import parse_dialogue, render_audio, render_dialogue, render_text
    from streamchar.media import load_audio

    sources = [x for x in (args.text, args.text_file, args.audio, args.dialogue) if x is not None]
    if len(sources) != 1:
        raise CLIError("Give exactly one of --text, --text-file, --audio or --dialogue.")
    engine = _engine(args, load(args, *engine_settings(args)), with_orchestrator=args.audio is None)
    if args.dialogue is not None:
        characters = _cast(args, engine, 2)
        lines = parse_dialogue(read_text(args.dialogue))
        summary = render_dialogue(engine, characters, lines, args.out)
    elif args.audio is not None:
        (character,) = _cast(args, engine, 1)
        speech = load_audio(args.audio, engine.timeline.sample_rate)
        summary = render_audio(engine, character, speech, args.out)
    else:
        (character,) = _cast(args, engine, 1)
        text = args.text if args.text is not None else read_text(args.text_file)
        summary = render_text(engine, character, text, args.out)
    for name, voice in zip(summary["characters"], summary["voices"], strict=True):
        print(f"{name}: voice {voice}", file=sys.stderr)
    print_json(summary)


def _serve(app, cfg) -> None:
    import uvicorn

    scfg = cfg.serve
    if scfg.host not in ("127.0.0.1", "localhost", "::1") and not scfg.token:
        logger.warning("serving on %s without a token: anyone who can reach it can start sessions", scfg.host)
    suffix = f"?token={scfg.token}" if scfg.token else ""
    print(f"StreamChar: open http://{scfg.host}:{scfg.port}/{suffix}", file=sys.stderr)
    uvicorn.run(app, host=scfg.host, port=scfg.port, log_level="warning",
                ws_max_size=2 * scfg.max_message_bytes)  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> None:
    """FastAPI app on serve.host:serve.port (127.0.0.1:8000). Open / in a browser, pick or upload a character,
    type text or use the microphone. The WebSocket protocol is in docs/architecture.md."""
    try:
        from streamchar.serve.app import create_app
    except ImportError as err:
        raise CLIError(
            f"streamchar serve needs the serve extra ({err.name} is missing): pip install 'streamchar[serve]'."
        ) from err
    cfg = load(args, *serve_settings(args), *engine_settings(args))
    _serve(create_app(_engine(args, cfg)), cfg)


def cmd_stream(args: argparse.Namespace) -> None:
    """Serves one session: when a client connects (the page with ?autostart=1, or any client of /ws), each
    line of text is pushed word by word as it is read, and chunks stream live."""
    from streamchar.serve.app import create_app, text_feed

    character = [setting("engine.character", args.character[0])] if args.character else []
    cfg = load(
        args, *serve_settings(args), setting("serve.max_sessions", 1), *character, *engine_settings(args)
    )
    if args.text is not None:
        lines = [args.text]
    elif args.text_file not in (None, "-"):
        lines = read_text(args.text_file).splitlines()
    else:
        print("StreamChar: type lines for the character to say (Ctrl-D ends)", file=sys.stderr)
        lines = sys.stdin
    engine = _engine(args, cfg)
    app = create_app(engine, feed=text_feed(lines, word_seconds=args.word_seconds))
    suffix = ("&token=" + cfg.serve.token) if cfg.serve.token else ""
    print(f"StreamChar: the live session starts when a client opens http://{cfg.serve.host}:{cfg.serve.port}/"
          f"?autostart=1{suffix} (or connects to ws://{cfg.serve.host}:{cfg.serve.port}/ws)", file=sys.stderr)  # fmt: skip
    _serve(app, cfg)


def cmd_bench_stream(args: argparse.Namespace) -> None:
    """For each preset and step count, runs a session with decode overlap on and off, side by side, with text
    pushed before the start and again mid-session; prints a table and optionally saves JSON."""
    from streamchar.engine.bench import bench_stream, format_table

    cfg = load(args)
    options = dict(steps=args.steps, chunks=args.chunks, overlap=args.overlap, presets=args.preset,
                   random_init=args.random_init, ablate=args.ablate, profile=args.profile)  # fmt: skip
    if args.split and args.preset:
        raise SystemExit("streamchar: error: --split runs the --config preset; leave out --preset.")
    if args.split:
        from streamchar.engine.bench_split import bench_with_split

        result = bench_with_split(cfg, **options)
    else:
        result = bench_stream(cfg, **options)
    print(format_table(result))
    if args.json:
        write_json(args.json, result, indent=1)


def cmd_sample(args: argparse.Namespace) -> None:
    """Drive the teacher with a held-out clip's ground-truth audio conditions, chunk after chunk with the
    window memory, decode, and write OUT/sample.mp4 (generated | ground truth), OUT/contact_sheet.png and
    OUT/sample.json."""
    from streamchar.eval.protocols.teacher_samples import sample_clip

    summary = sample_clip(load(args, *video_codec(args)), args.teacher, args.latents, args.out, clip=args.clip,
                          mode=args.mode, ref_image=args.ref_image, chunks=args.chunks)  # fmt: skip
    print_json(summary)


STEPS = arg("--steps", type=int, default=None, help="denoising steps per chunk (default: engine.steps)")
DENOISER = arg("--denoiser", default=None, help="denoiser checkpoint (default: engine.denoiser_path)")
TEXT = arg("--text", default=None, help="what the character says")
SERVING = (
    arg("--host", default=None, help="bind address (default: serve.host = 127.0.0.1)"),
    arg("--port", type=int, default=None, help="port (default: serve.port = 8000)"),
    arg("--token", default=None, help="require this bearer token (default: serve.token)"),
    STEPS, DENOISER, CONFIG,
)  # fmt: skip


def register(sub) -> None:
    command(
        sub, "generate", cmd_generate,
        "a talking-character mp4 (H.264 + AAC) from text, a dialogue script, or given speech",
        arg("--image", action="append", help="square PNG/JPEG reference image (twice for --dialogue)"),
        arg("--voice", action="append", help="a few seconds of the voice, any audio file (twice for --dialogue)"),
        arg("--character", action="append", help="a shipped character name or folder (twice for --dialogue)"),
        TEXT, arg("--text-file", default=None, help="UTF-8 text file with what the character says ('-' = stdin)"),
        arg("--audio", default=None, help="speech that drives the character instead of text (audio-driven)"),
        arg("--dialogue", default=None, help="script of 'A: text' / 'B: text' lines for two characters"),
        out("output mp4"), STEPS, DENOISER,
        arg("--no-overlap", action="store_true", help="decode after each chunk instead of beside the next"),
        CONFIG,
    )  # fmt: skip
    command(
        sub, "serve", cmd_serve, "the live web app: a page and one WebSocket per session (extra: serve)", *SERVING,
    )  # fmt: skip
    command(
        sub, "stream", cmd_stream,
        "one live session, its text from --text/--text-file/stdin, played to a WebSocket client",
        TEXT, arg("--text-file", default=None, help="lines to say ('-' or none = stdin, as typed)"),
        arg("--character", action="append", help="shipped character name or folder"),
        arg("--word-seconds", type=float, default=0.15, help="pause between pushed words"), *SERVING,
    )  # fmt: skip
    bench_sub = group(sub, "bench", help="benchmarks (ratios measured side by side in one run)")
    command(
        bench_sub, "stream", cmd_bench_stream,
        "time to first frame, chunk latency p50/p95/p99, real-time factor, deadline misses, text-to-speech latency",
        arg("--preset", action="append", default=None, help="preset(s) to run (default: the --config one)"),
        arg("--steps", type=int, nargs="+", default=[1, 2, 4, 32], help="step counts (default: 1 2 4 32)"),
        arg("--chunks", type=int, default=16, help="chunks per run (default: 16)"),
        arg("--overlap", choices=["both", "on", "off"], default="both", help="decode overlap runs"),
        arg("--random-init", action="store_true",
            help="random weights for every component (time a preset whose weights you do not have, e.g. base)"),
        arg("--ablate", action="store_true",
            help="also one row per fast-path optimisation switched off alone (first step count)"),
        arg("--split", action="store_true",
            help="also run with the decoders in a second process (the second GPU with two; gloo on a CPU)"),
        arg("--profile", metavar="DIR", default=None,
            help="profile a few chunks: DIR/trace.json (Chrome trace) and DIR/profile.md (time per stage)"),
        arg("--json", default=None, help="also write the result here"), CONFIG,
    )  # fmt: skip
    command(
        sub, "sample", cmd_sample, "regenerate a held-out clip with the teacher: mp4 with sound and a contact sheet",
        arg("--teacher", required=True, help="teacher run folder or checkpoint folder"),
        arg("--latents", required=True, help="latent cache the clip comes from"), out("output folder"),
        arg("--clip", default=None, help="clip key (default: the first held-out speaking clip)"),
        arg("--mode", default="joint", choices=["joint", "audio"],
            help="joint: text -> speech + video; audio: the clip's speech given, video generated"),
        arg("--ref-image", default=None, help="a square PNG/JPEG reference image (default: another clip)"),
        arg("--chunks", type=int, default=None, help="number of chunks (default: the whole clip)"),
        arg("--video-codec", default=None, help="video codec folder (sets video_codec.path)"), CONFIG,
    )  # fmt: skip
