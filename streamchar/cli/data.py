"""``streamchar data``: corpora: synthesise, preview, verify, prepare real clips, export, encode latents."""

from __future__ import annotations

import argparse

from streamchar.cli.arguments import CONFIG, CORPUS, arg, command, group, out
from streamchar.cli.common import load, print_json, setting, video_codec, write_json


def cmd_data_synth(args: argparse.Namespace) -> None:
    """Synthesise the synthetic talking-character corpus into shards; re-running resumes."""
    from streamchar.data.synth import synth_corpus

    workers = [] if args.workers is None else [setting("data.synth.workers", args.workers)]
    summary = synth_corpus(load(args, *workers), args.out)
    print_json(summary)


def cmd_data_preview(args: argparse.Namespace) -> None:
    from streamchar.data.preview import write_preview

    print_json(write_preview(args.corpus, args.out, clips=args.clips))


def cmd_data_verify(args: argparse.Namespace) -> None:
    from streamchar.data.shards import Corpus
    from streamchar.data.verify import timing_truth

    result = timing_truth(Corpus(args.corpus), split=args.split, max_clips=args.max_clips)
    if args.json:
        write_json(args.json, result)
    print_json(result)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    """Each VIDEO (mp4, mkv, mov, webm, avi) needs VIDEO.txt (transcript) beside it and may have
    VIDEO.TextGrid (Montreal Forced Aligner). Bad clips are skipped and counted."""
    from streamchar.data.prepare import prepare_corpus

    print_json(prepare_corpus(load(args), args.source, args.out))


def cmd_data_export(args: argparse.Namespace) -> None:
    from streamchar.data.prepare import export_videos

    print_json(export_videos(args.corpus, args.out, split=args.split, max_clips=args.max_clips))


def cmd_data_export_character(args: argparse.Namespace) -> None:
    """Writes the first frame of the character's first monologue, the first seconds of its speech and its
    longest turns (the orchestrator's voice prompt) from a turn table (RUN/turns.jsonl)."""
    from streamchar.engine.characters import export_character

    print_json(
        export_character(args.corpus, args.turns, args.char_id, args.out, voice_seconds=args.voice_seconds)
    )


def cmd_data_encode(args: argparse.Namespace) -> None:
    from streamchar.data.latents import encode_corpus

    print_json(encode_corpus(load(args, *video_codec(args)), args.corpus, args.out))


SPLIT = arg("--split", default=None, help="train or test (default: all)")


def register(sub) -> None:
    data_sub = group(
        sub, "data", help="corpora: synthesise, preview, verify, prepare real clips, encode latents"
    )
    command(
        data_sub, "synth", cmd_data_synth, "synthesise the talking-character corpus (resumable)",
        out("corpus folder"),
        arg("--workers", type=int, default=None, help="processes (default: data.synth.workers, 0 = all cores)"),
        CONFIG,
    )  # fmt: skip
    command(
        data_sub, "preview", cmd_data_preview, "contact sheet PNG and an mp4 with sound of a corpus",
        CORPUS, out("output folder"), arg("--clips", type=int, default=6, help="clips to show"),
    )  # fmt: skip
    command(
        data_sub, "verify", cmd_data_verify, "check ground truth against audio (mouth-energy r, phoneme silences)",
        CORPUS, SPLIT, arg("--max-clips", type=int, default=None, help="check at most this many clips"),
        arg("--json", default=None, help="also write the result to this file"),
    )  # fmt: skip
    command(
        data_sub, "prepare", cmd_data_prepare, "ingest a folder of real videos with transcripts into shards (resumable)",
        arg("source", help="folder of videos"), out("corpus folder"), CONFIG,
    )  # fmt: skip
    command(
        data_sub, "export", cmd_data_export,
        "write corpus clips as mp4 + transcript + TextGrid (the layout `data prepare` reads)",
        CORPUS, out("output folder"), SPLIT,
        arg("--max-clips", type=int, default=None, help="export at most this many clips"),
    )  # fmt: skip
    command(
        data_sub, "export-character", cmd_data_export_character,
        "a character folder (image.png, voice.wav, prompt.json) from a corpus character",
        CORPUS, arg("--turns", required=True, help="turn table (RUN/turns.jsonl of `streamchar train orchestrator`)"),
        arg("--char-id", type=int, required=True, help="the character's char_id in corpus.json"),
        out("character folder to write"),
        arg("--voice-seconds", type=float, default=3.0, help="seconds of reference voice"), CONFIG,
    )  # fmt: skip
    command(
        data_sub, "encode", cmd_data_encode, "encode a corpus into the latent cache (resumable)",
        CORPUS, out("latent cache folder"),
        arg("--video-codec", default=None, help="trained video codec folder (sets video_codec.path)"), CONFIG,
    )  # fmt: skip
