"""The ``streamchar`` command: thin wrappers over the packages, one module per command group.

Every command takes ``--config PRESET_OR_FILE`` and trailing ``key=value`` overrides, for example
``streamchar data synth --out data/corpus data.synth.num_characters=20``; a command's own flags become
overrides too (:mod:`streamchar.cli.common`). Heavy imports happen inside the handlers so that ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from streamchar.cli import config, data, distill, engine, evaluate, recipe, train
from streamchar.cli.common import CLIError

logger = logging.getLogger("streamchar")
GROUPS = (
    config,
    data,
    train,
    distill,
    evaluate,
    engine,
    recipe,
)  # in the order `streamchar --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamchar",
        description="StreamChar: real-time streaming text-to-talking-character generation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
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
    from streamchar.recipe.spec import RecipeError

    user_errors = (CLIError, ConfigError, CorpusError, MediaError, EspeakError, RecipeError, FileNotFoundError,
                   ValueError, FloatingPointError)  # fmt: skip
    start = time.perf_counter()
    try:
        args.func(args)
    except user_errors as err:
        if args.verbose:
            raise
        print(f"streamchar: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamchar: interrupted; completed work is kept and a re-run resumes.", file=sys.stderr)
        return 130
    logger.debug("done in %.1fs", time.perf_counter() - start)
    return 0
