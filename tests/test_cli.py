"""The streamchar command: help everywhere, one-line errors."""

import subprocess
import sys

import pytest

from streamchar.cli import build_parser, main

COMMANDS = [[], ["config", "show"], ["data", "synth"], ["data", "preview"], ["data", "verify"], ["data", "prepare"],
            ["data", "export"], ["data", "encode"], ["train", "vae"], ["train", "teacher"], ["codec", "eval"],
            ["sample"], ["demo"], ["recipe"], ["train", "orchestrator"], ["eval", "orchestrator"], ["plan"], ["generate"],
            ["serve"], ["stream"], ["bench", "stream"], ["data", "export-character"], ["distill", "stage1"],
            ["distill", "stage2"], ["distill", "toy"], ["distill", "compare"], ["distill", "drift"],
            ["eval", "cache"], ["eval", "train"], ["eval", "prove"], ["eval", "protocol"], ["train", "prior"],
            ["eval", "unseen"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: streamchar" in capsys.readouterr().out


def test_every_leaf_command_is_covered():
    parser = build_parser()
    leaves = set()
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            if nested:
                leaves |= {(name, n) for n in nested[0].choices}
            else:
                leaves.add((name,))
    assert leaves == {tuple(c) for c in COMMANDS if c}


def test_config_show_and_errors(capsys):
    assert main(["config", "show", "timeline.fps=25"]) == 0
    assert "chunk_latent_frames: 12" in capsys.readouterr().out
    assert main(["config", "show", "timeline.fsp=25"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamchar: error: Unknown config key timeline.fsp") and "\n" not in err
    assert main(["data", "verify", "/nonexistent/corpus"]) == 2
    assert "no corpus.json" in capsys.readouterr().err


def test_eval_protocol_is_the_eval_command_itself(capsys):
    from streamchar.cli import _parse

    args = _parse(["eval", "--protocol", "short", "--ckpt", "a", "--ckpt", "b@4", "timeline.fps=25"])
    assert args.protocol == "short" and args.ckpt == ["a", "b@4"] and args.overrides == ["timeline.fps=25"]
    assert _parse(["eval", "orchestrator", "--table", "t.jsonl"]).table == "t.jsonl"
    for argv, message in ((["eval", "--protocol", "short"], "at least one --ckpt"),
                          (["eval", "--protocol", "long", "--ckpt", "/nonexistent/ckpt"], "not found")):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "streamchar.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "data" in out.stdout


def test_overrides_after_options(capsys):
    parser_args = ["data", "encode", "corpus", "--out", "x", "data.encode.max_shards=2", "timeline.fps=25"]
    from streamchar.cli import _parse

    args = _parse(parser_args)
    assert args.overrides == ["data.encode.max_shards=2", "timeline.fps=25"] and args.out == "x"
    with pytest.raises(SystemExit):
        _parse(["data", "encode", "corpus", "--out", "x", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_generate_refuses_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    cases = [
        (["generate", "--out", str(tmp_path / "x.mp4")], "exactly one of"),
        (
            ["generate", "--text", "hi", "--text-file", "f", "--out", str(tmp_path / "x.mp4")],
            "exactly one of",
        ),
        (["generate", "--text", "hi", "--image", str(bad), "--out", str(tmp_path / "x.mp4")], "as an image"),
        (
            ["generate", "--text", "hi", "--character", "nobody", "--out", str(tmp_path / "x.mp4")],
            "No character",
        ),
        (
            ["generate", "--dialogue", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.mp4")],
            "does not exist",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.mp4").exists()


def test_flags_are_overrides_that_win(tmp_path):
    """A command's flags reach the config as overrides after the trailing ones, never written into it."""
    from streamchar.cli import _parse
    from streamchar.cli.common import load, video_codec
    from streamchar.cli.engine import engine_settings, serve_settings

    argv = ["generate", "--text", "hi", "--out", str(tmp_path / "x.mp4"), "--steps", "3", "--no-overlap"]
    args = _parse([*argv, "engine.steps=5"])
    cfg = load(args, *engine_settings(args))
    assert cfg.engine.steps == 3 and cfg.engine.decode_overlap is False
    args = _parse(["serve", "--port", "8123", "--token", "true", "--host", "0.0.0.0"])
    cfg = load(args, *serve_settings(args))
    assert (cfg.serve.port, cfg.serve.token, cfg.serve.host) == (8123, "true", "0.0.0.0")
    args = _parse(["data", "encode", "corpus", "--out", "x", "--video-codec", str(tmp_path / "my codec")])
    assert load(args, *video_codec(args)).video_codec.path == str(tmp_path / "my codec")
