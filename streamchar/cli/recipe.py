"""``streamchar recipe`` (the reference pipeline) and ``streamchar demo`` (what it ships, speaking)."""

from __future__ import annotations

import argparse
import time

from streamchar.cli.arguments import CONFIG, arg, command, out
from streamchar.cli.common import load


def cmd_recipe(args: argparse.Namespace) -> None:
    """Runs corpus -> vae -> latents -> priors (audio, video, video tuned on noisy last frames) -> teacher ->
    orchestrator -> instruments -> stage 1 (2, 1, 4 steps) -> stage 2 -> ship -> results, skipping each stage
    whose output is present, valid and built from unchanged inputs; an interrupted recipe resumes. Uses a GPU
    when there is one. Prints each stage's wall time and the total."""
    from streamchar.recipe.run import describe_plan, plan, run_recipe
    from streamchar.recipe.spec import Recipe

    recipe = Recipe.load(args.recipe, args.root)
    if args.list:
        print(describe_plan(plan(recipe)))
        return
    start = time.perf_counter()
    rows = run_recipe(recipe, only=args.only, until=args.until, force=args.force)
    print(describe_plan(rows))
    print(f"this invocation: {(time.perf_counter() - start) / 60:.1f} min")


def cmd_demo(args: argparse.Namespace) -> None:
    """Writes OUT (default out/demo.mp4), OUT-dialogue.mp4 (two characters), OUT.png (a contact sheet of both)
    and OUT.json, and prints the real-time factor and time to first frame of each. Uses --model tiny unless
    --model or --config is given."""
    from streamchar.demo import describe, run_demo

    if args.model_name is None and args.config is None:
        args.model_name = "tiny"  # the shipped model, unless a config says otherwise
    print(describe(run_demo(load(args), args.out)))


def register(sub) -> None:
    command(
        sub, "recipe", cmd_recipe, "the reference pipeline from corpus to shipped, evaluated model (resumable)",
        arg("recipe", nargs="?", default="tiny", help="recipe name (configs/recipes/NAME.yaml) or YAML file"),
        arg("--root", default=None, help="prefix for the recipe's relative folders (default: here)"),
        arg("--only", action="append", default=None, metavar="STAGE", help="run only this stage (repeat)"),
        arg("--until", default=None, metavar="STAGE", help="stop after this stage"),
        arg("--force", action="store_true", help="run the chosen stages even when their output is done"),
        arg("--list", action="store_true", help="print each stage's status and recorded time, run nothing"),
    )  # fmt: skip
    command(
        sub, "demo", cmd_demo, "the demo behind `make demo`: a shipped character speaks with the 2-step student",
        out("the mp4 to write (default: out/demo.mp4)", default="out/demo.mp4"), CONFIG,
    )  # fmt: skip
