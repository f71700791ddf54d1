"""``results``: the short, long and unseen-text protocols over the shipped model, each report stamped with the
digest of the ``model.json`` it judged (so that a model shipped again is judged again)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from streamchar.config import load_config
from streamchar.recipe.ship import model_fingerprint
from streamchar.recipe.spec import TURNS, Recipe

logger = logging.getLogger(__name__)


def results_specs(recipe: Recipe) -> dict[str, list[str]]:
    """The ``--ckpt`` lists of the short and long protocols over the shipped model."""
    model = recipe.folders["model"]
    s2 = f"{model}/student-s2-2step"
    steps = recipe.settings("results").get("teacher_steps", 32)
    # the stage-1 1- and 4-step students are compared with the others by `distill compare` (docs/results.md)
    short = [f"teacher@{steps}={model}/teacher@{steps}", f"s2_2step={s2}", f"prior_alone={s2}:prioronly",
             f"s2_2step_keepall={s2}:keepall", f"s1_2step={model}/student-s1-2step", f"s2_2step_nosink={s2}:nosink",
             f"s2_2step_nomotion={s2}:nomotion", f"s2_2step_norealign={s2}:norealign",
             f"cascade_espeak={s2}:cascade", f"audio_driven_gt_speech={s2}:speech",
             *present(recipe.settings("results").get("extra_short", []))]  # fmt: skip
    return {
        "short": short,
        "long": [f"s2_2step={s2}", f"prior_alone={s2}:prioronly"],
    }


def present(specs: list[str]) -> list[str]:
    """The extra ``NAME=PATH[...]`` rows whose model folder exists (e.g. an older model kept in a run folder
    for comparison); the others are left out with a warning."""
    kept = []
    for spec in specs:
        path = spec.partition("=")[2].partition("@")[0].partition(":")[0]
        if Path(path).exists():
            kept.append(spec)
        else:
            logger.warning("results: leaving out the row %s: %s does not exist", spec, path)
    return kept


def results_done(recipe: Recipe) -> bool:
    """Every report exists, holds its rows and judged the model folder as it is now."""
    unseen = recipe.folders["results"] / "recipe_unseen" / "report.json"
    if not unseen.is_file() or json.loads(unseen.read_text()).get("model_fingerprint") != model_fingerprint(
        recipe.folders["model"]
    ):
        return False
    for protocol, specs in results_specs(recipe).items():
        report = recipe.folders["results"] / f"recipe_{protocol}" / "report.json"
        if not report.is_file():
            return False
        names = {s.partition("=")[0] for s in specs}
        content = json.loads(report.read_text())
        models = {name.partition(" (")[0] for name in content.get("models", {})}
        if not names <= models or content.get("model_fingerprint") != model_fingerprint(
            recipe.folders["model"]
        ):
            return False
    return True


def run_results(recipe: Recipe) -> dict:
    """Run the three protocols over the shipped model and stamp their reports."""
    from streamchar.config import model_overrides
    from streamchar.eval.protocols.heldout import run_protocol

    settings, model = recipe.settings("results"), recipe.folders["model"]
    cfg = load_config(recipe.preset, recipe.overrides + model_overrides(model)[1]
                      + [f"engine.phoneme_reader={recipe.folders['instruments'] / 'recognizer'}"])  # fmt: skip
    turns = recipe.run_folder("orchestrator") / TURNS
    common = dict(corpus=recipe.folders["corpus"], eval_cache=recipe.folders["eval_cache"],
                  instruments=recipe.folders["instruments"], turns=turns)  # fmt: skip
    specs, out = results_specs(recipe), recipe.folders["results"]
    teacher, students = specs["short"][:1], specs["short"][1:]
    reports = {}
    # the slow 32-step teacher on fewer clips, in its own report; the rest side by side
    reports["short_teacher"] = run_protocol(cfg, "short", teacher, out / "recipe_short_teacher",
                                            clips=settings.get("teacher_clips", 8), **common)  # fmt: skip
    reports["short"] = run_protocol(cfg, "short", students, out / "recipe_short",
                                    clips=settings.get("short_clips", 24), **common)  # fmt: skip
    _merge_teacher(out / "recipe_short", reports["short_teacher"])
    reports["long"] = run_protocol(cfg, "long", specs["long"], out / "recipe_long",
                                   minutes=settings.get("long_minutes", 10.0),
                                   segment_seconds=settings.get("segment_seconds", 60.0), **common)  # fmt: skip
    from streamchar.eval.protocols.unseen import UNSEEN_SENTENCES, unseen_protocol

    character = settings.get("unseen_character", "cleo")
    sentences = UNSEEN_SENTENCES[: settings.get("unseen_sentences", len(UNSEEN_SENTENCES))]
    reports["unseen"] = unseen_protocol(cfg, f"s2_2step={model}/student-s2-2step", character,
                                        recipe.folders["instruments"], out / "recipe_unseen", turns,
                                        sentences)  # fmt: skip
    reports["unseen"]["models"] = [reports["unseen"]["model"]]
    for protocol in ("short", "long", "unseen"):  # which model folder these results judged
        _stamp(out / f"recipe_{protocol}" / "report.json", model_fingerprint(model))
    return {name: sorted(r["models"]) for name, r in reports.items()}


def _stamp(report: Path, fingerprint: str | None) -> None:
    content = json.loads(report.read_text())
    content["model_fingerprint"] = fingerprint
    report.write_text(json.dumps(content, indent=1) + "\n")


def _merge_teacher(folder: Path, teacher: dict) -> None:
    """Add the teacher's rows (and the ground truth of its clips), measured on its own fewer clips and
    named with their count, to the students' report (JSON, Markdown and plots)."""
    from streamchar.eval.reports.protocol import write_report

    report = json.loads((folder / "report.json").read_text())
    count = len(teacher["clips"])
    for name, row in teacher["models"].items():
        report["models"][f"{name} ({count} clip{'s' * (count != 1)})"] = row
    write_report(report, folder)
