"""How a command registers: :func:`command` with its arguments in order, each added by an :data:`Adder`, and
the arguments several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Adder = Callable[[argparse.ArgumentParser], object]  # adds one or more arguments to a command's parser


def command(
    sub, name: str, func: Callable[[argparse.Namespace], None], help: str, *arguments: Adder
) -> argparse.ArgumentParser:
    """Registers the command ``name`` under ``sub``: its one-line ``help``, its ``arguments`` in order, and its
    handler ``func``, whose docstring is the command's description in ``--help`` (reflowed, as argparse does)."""
    p = sub.add_parser(name, help=help, description=func.__doc__)
    for add in arguments:
        add(p)
    p.set_defaults(func=func)
    return p


def group(sub, name: str, help: str, description: str | None = None):
    """A command group (``streamchar NAME SUBCOMMAND``); returns the group's ``sub`` for :func:`command`."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)


def arg(*flags: str, **options) -> Adder:
    """One argument, as ``add_argument(*flags, **options)``."""
    return lambda p: p.add_argument(*flags, **options)


def out(help: str, default: str | None = None, optional: bool = False) -> Adder:
    """``--out``: required unless it has a default or is ``optional`` (the command then picks one)."""
    return arg("--out", required=default is None and not optional, default=default, help=help)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="preset name (tiny, base) or YAML file (default: tiny)")
    # distill compare|drift use --model for their contenders (added before CONFIG, so it is seen here)
    if "--model" not in p._option_string_actions:
        what = "a shipped model by name (tiny) or a model folder: sets the codec, orchestrator, denoiser, characters"
        p.add_argument("--model", dest="model_name", default=None, metavar="NAME|DIR", help=what)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. timeline.fps=25")


CONFIG: Adder = _config_args  # --config, --model and the trailing key=value overrides; read with load()
MAX_STEPS = arg("--max-steps", type=int, default=None, help="stop after this many steps in this invocation")
CORPUS = arg("corpus", help="corpus folder")
LATENTS = arg("--latents", required=True, help="latent cache folder")


def run_args(out_help: str) -> tuple[Adder, ...]:
    """What a resumable run ends with: its run folder (``--out``), ``--max-steps`` and the config."""
    return out(out_help), MAX_STEPS, CONFIG
