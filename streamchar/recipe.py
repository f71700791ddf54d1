"""``streamchar recipe tiny``: the reference model from corpus to distilled student, one resumable pipeline.

A recipe file (``configs/recipes/tiny.yaml``) names the folders and each stage's budget; the stages run
in order::

    corpus -> vae -> latents -> prior-audio -> prior-video -> prior-video-tune -> teacher -> orchestrator
           -> instruments -> stage1-{2,1,4}step -> stage2-2step -> ship (the model folder)
           -> results (short and long protocols)

Each stage is skipped when its output is present and valid (a finished run, a complete cache) and what it
was built from is unchanged: when a stage finishes, the recipe records a digest of each stage it read
(``INPUTS``) and of its own settings, and a stage whose inputs have changed since (a retrained prior, a
re-encoded cache) is stale: its old output is moved aside (``NAME.stale``) and it runs again, and so does
everything after it that read it. ``ship`` and ``results`` check the digests of what they were made from the
same way. The training stages resume from their own checkpoints, so an interrupted recipe picks up where it
stopped.
Every stage uses a GPU when there is one and the CPU otherwise. ``RUNS/recipe-NAME.json`` records how
long each stage took and on what device; the recipe prints the table and the total at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from streamchar.config import MODEL_FILE, REPO_ROOT, StreamCharConfig, load_config

logger = logging.getLogger(__name__)
STAGES = ("corpus", "vae", "latents", "prior-audio", "prior-video", "prior-video-tune", "teacher", "orchestrator",
          "instruments", "stage1-2step", "stage1-1step", "stage1-4step", "stage2-2step", "ship", "results")  # fmt: skip
# the stages each stage reads (its inputs); ship and results check theirs by digest themselves
INPUTS = {"vae": ("corpus",), "latents": ("corpus", "vae"), "prior-audio": ("latents",),
          "prior-video": ("latents", "prior-audio"), "prior-video-tune": ("latents", "prior-audio", "prior-video"),
          "teacher": ("latents", "prior-audio", "prior-video-tune"),
          "orchestrator": ("corpus",), "instruments": ("corpus",), "stage1-2step": ("teacher",),
          "stage1-1step": ("teacher",), "stage1-4step": ("teacher",),
          "stage2-2step": ("teacher", "orchestrator", "instruments")}  # fmt: skip
# the stage whose prior the later stages and the model folder use: the video prior trained on single windows is
# fine-tuned reading noisy last latents (fed its own output, the window-trained one drifts off the face within
# seconds; the tuned one pulls a drifted frame back: docs/results/formulations.md)
PRIOR_STAGES = {"audio": "prior-audio", "video": "prior-video-tune"}
DEFAULT_INIT = {
    "prior-video-tune": "prior-video",
    "stage2-2step": "stage1-2step",
}  # what a stage starts from when its settings name no init
TURNS = "turns.jsonl"  # the orchestrator run's turn table (voice prompts)
MODEL_PARTS = {"video_codec.path": "vae", "orchestrator.path": "orchestrator", "engine.characters_dir": "characters",
               "distill.teacher": "teacher", "prior.audio_path": "prior-audio",
               "prior.video_path": "prior-video"}  # fmt: skip


class RecipeError(ValueError):
    """A recipe that cannot run as given; the message says what to change."""


@dataclass
class Recipe:
    """A parsed recipe file: folders, global overrides and per-stage settings."""

    name: str
    preset: str
    folders: dict[str, Path]
    overrides: list[str]
    stages: dict[str, dict]
    stage1_overrides: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, name_or_path: str | Path, root: str | Path | None = None) -> Recipe:
        """``tiny`` (``configs/recipes/tiny.yaml``) or a YAML path; ``root`` prefixes the relative folders."""
        path = Path(name_or_path)
        if not path.suffix:
            path = REPO_ROOT / "configs" / "recipes" / f"{name_or_path}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in (REPO_ROOT / "configs" / "recipes").glob("*.yaml"))
            raise RecipeError(f"No recipe '{name_or_path}'; give one of {', '.join(shipped)} or a YAML file.")
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            folders = {k: Path(root or ".") / v for k, v in raw["folders"].items()}
            stages = {k: dict(v or {}) for k, v in raw["stages"].items()}
        except Exception as err:
            raise RecipeError(
                f"Could not read recipe {path} ({err}); compare it with configs/recipes/tiny.yaml."
            ) from err
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise RecipeError(f"Unknown stage '{unknown[0]}' in {path}; stages are {', '.join(STAGES)}.")
        missing = sorted(
            {"corpus", "latents", "eval_cache", "runs", "instruments", "model", "results"} - set(folders)
        )
        if missing:
            raise RecipeError(f"Recipe {path} names no folder for '{missing[0]}'; add it under folders:.")
        return cls(path.stem, raw.get("preset", "tiny"), folders, list(raw.get("overrides") or []), stages,
                   list(raw.get("stage1_overrides") or []))  # fmt: skip

    def settings(self, stage: str) -> dict:
        return self.stages.get(stage, {})

    def run_folder(self, stage: str) -> Path:
        return self.folders["runs"] / self.settings(stage).get("run", f"{self.name}-{stage}")

    def config(self, stage: str, *extra: str) -> StreamCharConfig:
        """The stage's config: preset, the recipe's overrides, the priors this recipe trains (for the stages
        after them), the stage's overrides, then ``extra``."""
        overrides = list(self.overrides)
        order = list(STAGES)
        for kind, prior_stage in PRIOR_STAGES.items():
            if order.index(stage) > order.index(prior_stage):
                overrides.append(f"prior.{kind}_path={self.run_folder(prior_stage) / 'final'}")
        if stage.startswith("stage1"):
            overrides += self.stage1_overrides + [
                f"distill.pairs_dir={self.folders['runs'] / 'distill-pairs'}"
            ]
        overrides += list(self.settings(stage).get("overrides") or []) + list(extra)
        return load_config(self.preset, overrides)


# -- what each stage reads and writes --------------------------------------------------------------
def _finished(run: Path, output: str | None = None) -> bool:
    summary = run / "summary.json"
    if not summary.is_file() or (output and not (run / output).exists()):
        return False
    try:
        return bool(json.loads(summary.read_text()).get("finished"))
    except ValueError:
        return False


def _corpus_done(recipe: Recipe) -> bool:
    from streamchar.data.shards import MANIFEST
    from streamchar.data.synth import plan_jobs

    manifest = recipe.folders["corpus"] / MANIFEST
    if not manifest.is_file():
        return False
    scfg = recipe.config("corpus").data.synth
    shards = -(-len(plan_jobs(scfg)) // max(1, scfg.clips_per_shard))
    return len(json.loads(manifest.read_text()).get("shards", [])) == shards


def _latents_done(recipe: Recipe) -> bool:
    from streamchar.data.latents import MANIFEST
    from streamchar.data.shards import MANIFEST as CORPUS_MANIFEST

    manifest = recipe.folders["latents"] / MANIFEST
    if not manifest.is_file():
        return False
    if not (recipe.folders["corpus"] / CORPUS_MANIFEST).is_file():
        return False
    from streamchar.data.latents import cache_shards
    from streamchar.data.shards import Corpus

    corpus = Corpus(recipe.folders["corpus"])
    shards, _ = cache_shards(corpus, recipe.config("latents").data.encode)
    expected = sum(1 for c in corpus.clips if c["shard"] in set(shards))
    return len(json.loads(manifest.read_text()).get("clips", [])) == expected


def _stage1_cfg(recipe: Recipe, stage: str) -> StreamCharConfig:
    return recipe.config(stage, f"distill.teacher={recipe.run_folder('teacher')}")


def _ship_done(recipe: Recipe) -> bool:
    record = recipe.folders["model"] / MODEL_FILE
    if not record.is_file():
        return False
    try:
        sources = json.loads(record.read_text()).get("sources", {})
    except ValueError:
        return False
    return bool(sources) and all(_fingerprint(Path(src)) == mark for src, mark in sources.items())


def _fingerprint(run: Path) -> str | None:
    """A digest of a run's exported weights (its export folder, else its newest checkpoint) and summary, so
    that a retrained run is shipped again even at the same step count."""
    from streamchar.training import list_checkpoints

    if not (run / "summary.json").is_file():
        return None
    folders = [run / name for name in ("codec", "final", "student") if (run / name).is_dir()]
    folders = folders or list_checkpoints(run)[-1:]
    digest = hashlib.sha256((run / "summary.json").read_bytes())
    for path in sorted(p for folder in folders for p in folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _model_fingerprint(model: Path) -> str | None:
    record = model / MODEL_FILE
    return hashlib.sha256(record.read_bytes()).hexdigest()[:16] if record.is_file() else None


def _instruments_done(recipe: Recipe) -> bool:
    from streamchar.eval.suite import INSTRUMENTS

    # the results read the evaluation cache too (the test faces are the Fréchet reference)
    cache = recipe.folders["eval_cache"]
    return all((cache / f"{split}.pt").is_file() for split in ("train", "test")) and all(
        (recipe.folders["instruments"] / name / "config.json").is_file() for name in INSTRUMENTS
    )


def _results_specs(recipe: Recipe) -> dict[str, list[str]]:
    """The ``--ckpt`` lists of the short and long protocols over the shipped model."""
    model = recipe.folders["model"]
    s2 = f"{model}/student-s2-2step"
    steps = recipe.settings("results").get("teacher_steps", 32)
    # the stage-1 1- and 4-step students are compared with the others by `distill compare` (README)
    short = [f"teacher@{steps}={model}/teacher@{steps}", f"s2_2step={s2}", f"prior_alone={s2}:prioronly",
             f"s1_2step={model}/student-s1-2step", f"s2_2step_nosink={s2}:nosink",
             f"s2_2step_nomotion={s2}:nomotion", f"s2_2step_norealign={s2}:norealign",
             f"cascade_espeak={s2}:cascade", f"audio_driven_gt_speech={s2}:speech",
             *_present(recipe.settings("results").get("extra_short", []))]  # fmt: skip
    return {
        "short": short,
        "long": [f"s2_2step={s2}", f"prior_alone={s2}:prioronly"],
    }


def _present(specs: list[str]) -> list[str]:
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


def _results_done(recipe: Recipe) -> bool:
    unseen = recipe.folders["results"] / "recipe_unseen" / "report.json"
    if not unseen.is_file() or json.loads(unseen.read_text()).get("model_fingerprint") != _model_fingerprint(
        recipe.folders["model"]
    ):
        return False
    for protocol, specs in _results_specs(recipe).items():
        report = recipe.folders["results"] / f"recipe_{protocol}" / "report.json"
        if not report.is_file():
            return False
        names = {s.partition("=")[0] for s in specs}
        content = json.loads(report.read_text())
        models = {name.partition(" (")[0] for name in content.get("models", {})}
        if not names <= models or content.get("model_fingerprint") != _model_fingerprint(
            recipe.folders["model"]
        ):
            return False
    return True


# -- running the stages ------------------------------------------------------------------------------
def _run_corpus(recipe: Recipe) -> dict:
    from streamchar.data.synth import synth_corpus

    return synth_corpus(recipe.config("corpus"), recipe.folders["corpus"])


def _run_vae(recipe: Recipe) -> dict:
    from streamchar.codecs.train_vae import train_vae

    return train_vae(recipe.config("vae"), recipe.folders["corpus"], recipe.run_folder("vae"))


def _run_latents(recipe: Recipe) -> dict:
    from streamchar.data.latents import encode_corpus

    cfg = recipe.config("latents", f"video_codec.path={recipe.run_folder('vae') / 'codec'}")
    return encode_corpus(cfg, recipe.folders["corpus"], recipe.folders["latents"])


def _run_prior(kind: str, stage: str) -> Callable[[Recipe], dict]:
    """Train the ``kind`` prior of ``stage`` (starting from the prior of the stage it starts from, if any)."""

    def run(recipe: Recipe) -> dict:
        from streamchar.training.prior import train_prior

        init = _init_stage(recipe, stage)
        extra = [f"train.prior_{kind}.init={recipe.run_folder(init) / 'final'}"] if init else []
        return train_prior(
            recipe.config(stage, *extra), kind, recipe.folders["latents"], recipe.run_folder(stage)
        )

    return run


def _run_teacher(recipe: Recipe) -> dict:
    from streamchar.training.teacher import train_teacher

    return train_teacher(recipe.config("teacher"), recipe.folders["latents"], recipe.run_folder("teacher"))


def _run_orchestrator(recipe: Recipe) -> dict:
    from streamchar.training.orchestrator import train_orchestrator

    return train_orchestrator(recipe.config("orchestrator"), recipe.folders["corpus"],
                              recipe.run_folder("orchestrator"))  # fmt: skip


def _stage1(stage: str) -> Callable[[Recipe], dict]:
    def run(recipe: Recipe) -> dict:
        from streamchar.distill.stage1 import distill_stage1

        return distill_stage1(_stage1_cfg(recipe, stage), recipe.folders["latents"], recipe.run_folder(stage))

    return run


def _run_stage2(recipe: Recipe) -> dict:
    from streamchar.distill.stage2 import distill_stage2

    init = _init_stage(recipe, "stage2-2step")
    cfg = recipe.config("stage2-2step", f"distill.teacher={recipe.run_folder('teacher')}",
                        f"distill.init={recipe.run_folder(init)}",
                        f"orchestrator.path={recipe.run_folder('orchestrator') / 'final'}",
                        f"distill.phoneme_reader={recipe.folders['instruments'] / 'recognizer'}")  # fmt: skip
    return distill_stage2(cfg, recipe.folders["latents"], recipe.run_folder("stage2-2step"))


def _run_instruments(recipe: Recipe) -> dict:
    from streamchar.eval.features import build_eval_cache
    from streamchar.eval.suite import INSTRUMENTS, train_instrument

    cache = build_eval_cache(recipe.folders["corpus"], recipe.folders["eval_cache"])
    scores = {}
    for name in INSTRUMENTS:
        if (recipe.folders["instruments"] / name / "config.json").is_file():
            continue
        steps = recipe.settings("instruments").get("steps", {}).get(name)
        scores[name] = train_instrument(name, cache, recipe.folders["instruments"], steps,
                                        recipe.folders["runs"] / "eval")  # fmt: skip
    return scores


def _run_results(recipe: Recipe) -> dict:
    from streamchar.config import model_overrides
    from streamchar.eval.protocol import run_protocol

    settings, model = recipe.settings("results"), recipe.folders["model"]
    cfg = load_config(recipe.preset, recipe.overrides + model_overrides(model)[1]
                      + [f"engine.phoneme_reader={recipe.folders['instruments'] / 'recognizer'}"])  # fmt: skip
    turns = recipe.run_folder("orchestrator") / TURNS
    common = dict(corpus=recipe.folders["corpus"], eval_cache=recipe.folders["eval_cache"],
                  instruments=recipe.folders["instruments"], turns=turns)  # fmt: skip
    specs, out = _results_specs(recipe), recipe.folders["results"]
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
    from streamchar.eval.unseen import UNSEEN_SENTENCES, unseen_protocol

    character = settings.get("unseen_character", "cleo")
    sentences = UNSEEN_SENTENCES[: settings.get("unseen_sentences", len(UNSEEN_SENTENCES))]
    reports["unseen"] = unseen_protocol(cfg, f"s2_2step={model}/student-s2-2step", character,
                                        recipe.folders["instruments"], out / "recipe_unseen", turns,
                                        sentences)  # fmt: skip
    reports["unseen"]["models"] = [reports["unseen"]["model"]]
    for protocol in ("short", "long", "unseen"):  # which model folder these results judged
        _stamp(out / f"recipe_{protocol}" / "report.json", _model_fingerprint(model))
    return {name: sorted(r["models"]) for name, r in reports.items()}


def _stamp(report: Path, fingerprint: str | None) -> None:
    content = json.loads(report.read_text())
    content["model_fingerprint"] = fingerprint
    report.write_text(json.dumps(content, indent=1) + "\n")


def _merge_teacher(folder: Path, teacher: dict) -> None:
    """Add the teacher's rows (and the ground truth of its clips), measured on its own fewer clips and
    named with their count, to the students' report (JSON, Markdown and plots)."""
    from streamchar.eval.protocol import write_report

    report = json.loads((folder / "report.json").read_text())
    count = len(teacher["clips"])
    for name, row in teacher["models"].items():
        report["models"][f"{name} ({count} clip{'s' * (count != 1)})"] = row
    write_report(report, folder)


# -- what each stage was built from ------------------------------------------------------------------
def _digest_files(paths: list[Path]) -> str | None:
    digest = hashlib.sha256()
    found = False
    for path in paths:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
            found = True
    return digest.hexdigest()[:16] if found else None


def _output_digest(recipe: Recipe, stage: str) -> str | None:
    """A digest of what a stage made (None while it has made nothing)."""
    from streamchar.data.latents import MANIFEST as LATENTS_MANIFEST
    from streamchar.data.shards import MANIFEST as CORPUS_MANIFEST

    if stage == "corpus":
        return _digest_files([recipe.folders["corpus"] / CORPUS_MANIFEST])
    if stage == "latents":
        return _digest_files([recipe.folders["latents"] / LATENTS_MANIFEST])
    if stage == "instruments":
        from streamchar.eval.suite import INSTRUMENTS

        return _digest_files([recipe.folders["instruments"] / name / "config.json" for name in INSTRUMENTS])
    return _fingerprint(recipe.run_folder(stage))


def _settings_digest(recipe: Recipe, stage: str) -> str:
    settings = {"overrides": recipe.overrides + _stage_overrides(recipe, stage),
                "init": recipe.settings(stage).get("init")}  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _init_stage(recipe: Recipe, stage: str) -> str | None:
    """The stage whose output ``stage`` starts from (its ``init`` setting; stage 2: the stage-1 2-step student
    unless the recipe says otherwise)."""
    return recipe.settings(stage).get("init", DEFAULT_INIT.get(stage))


def _inputs(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The stages ``stage`` reads: ``INPUTS``, and the stage it starts from (``init``)."""
    init = _init_stage(recipe, stage)
    return INPUTS.get(stage, ()) + ((init,) if init and init not in INPUTS.get(stage, ()) else ())


def _built_from(recipe: Recipe, stage: str) -> dict:
    return {"inputs": {name: _output_digest(recipe, name) for name in _inputs(recipe, stage)},
            "settings": _settings_digest(recipe, stage)}  # fmt: skip


def _stale(recipe: Recipe, stage: str, record: dict) -> bool:
    """A finished stage whose recorded inputs or settings differ from the current ones. A stage finished before
    the recipe recorded them is taken as it is (and recorded now)."""
    if stage not in INPUTS or "inputs" not in record.get(stage, {}):
        return False
    built = _built_from(recipe, stage)
    return record[stage]["inputs"] != built["inputs"] or record[stage].get("settings") != built["settings"]


def _outputs(recipe: Recipe, stage: str) -> list[Path]:
    """Where a stage writes (moved aside when it is stale)."""
    if stage in ("corpus", "latents"):
        return [recipe.folders[stage]]
    if stage == "instruments":
        from streamchar.eval.suite import INSTRUMENTS

        return [recipe.folders["instruments"] / name for name in INSTRUMENTS]
    return [recipe.run_folder(stage)]


def _move_aside(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            aside = path.with_name(path.name + ".stale")
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            logger.warning("moved %s aside to %s: it was built from inputs that have changed", path, aside)


# -- ship: the model folder ----------------------------------------------------------------------------
def _bf16_copy(src: Path, dst: Path) -> None:
    """A safetensors file with its floating tensors in bfloat16 (half the bytes; what the engine runs)."""
    from safetensors.torch import load_file, save_file

    tensors = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(str(src)).items()
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst))


def _copy_files(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def _run_ship(recipe: Recipe) -> dict:
    """Write the model folder: codec, orchestrator, teacher (EMA), students, characters, model.json, README."""
    from streamchar.engine.characters import export_character
    from streamchar.training import list_checkpoints

    trained = (
        "vae",
        "prior-audio",
        "prior-video",
        "prior-video-tune",
        "teacher",
        "orchestrator",
        "stage1-1step",
        "stage1-2step",
        "stage1-4step",
        "stage2-2step",
    )
    model, runs = recipe.folders["model"], {s: recipe.run_folder(s) for s in trained}
    tmp, old = model.with_name(model.name + ".tmp"), model.with_name(model.name + ".old")
    if old.is_dir() and not model.exists():  # an earlier ship stopped between its two renames
        old.rename(model)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(runs["vae"] / "codec", tmp / "vae")
    shutil.copytree(runs["orchestrator"] / "final", tmp / "orchestrator")
    _copy_files(
        runs["orchestrator"],
        tmp / "orchestrator",
        ["curve.json", "curve.png", "summary.json", "train_orchestrator.json"],
    )
    for kind, stage in PRIOR_STAGES.items():
        folder = tmp / f"prior-{kind}"
        shutil.copytree(runs[stage] / "final", folder)
        _copy_files(runs[stage], folder, ["curve.json", "curve.png", "summary.json", "train_prior.json"])
        (folder / "README.md").write_text(prior_card(recipe, stage, runs[stage]))
    last = list_checkpoints(runs["teacher"])[-1]
    (tmp / "teacher").mkdir()
    _bf16_copy(last / ("ema.safetensors" if (last / "ema.safetensors").is_file() else "model.safetensors"),
               tmp / "teacher" / "model.safetensors")  # fmt: skip
    _copy_files(
        runs["teacher"],
        tmp / "teacher",
        ["denoiser.json", "summary.json", "curve.json", "curve.png", "train_teacher.json"],
    )
    students = {}
    for stage in ("stage1-1step", "stage1-2step", "stage1-4step", "stage2-2step"):
        name = {"stage1-1step": "student-s1-1step", "stage1-2step": "student-s1-2step",
                "stage1-4step": "student-s1-4step", "stage2-2step": "student-s2-2step"}[stage]  # fmt: skip
        folder = tmp / name
        folder.mkdir()
        _bf16_copy(runs[stage] / "student" / "model.safetensors", folder / "model.safetensors")
        _copy_files(runs[stage] / "student", folder, ["denoiser.json", "distilled.json"])
        students[stage] = name
    turns = runs["orchestrator"] / TURNS
    for char_name, char_id in recipe.settings("ship").get("characters", {"ada": 0}).items():
        export_character(recipe.folders["corpus"], turns, int(char_id), tmp / "characters" / char_name)
    default = students[recipe.settings("ship").get("default_student", "stage2-2step")]
    record = {
        "name": recipe.name, "preset": recipe.preset,
        "parts": MODEL_PARTS | {"engine.denoiser_path": default},
        "denoisers": ["teacher", *students.values()],
        "sources": {str(runs[s]): _fingerprint(runs[s]) for s in runs},
    }  # fmt: skip
    (tmp / MODEL_FILE).write_text(json.dumps(record, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(recipe, record))
    _carry_docs(model, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if model.exists():
        model.rename(old)
    tmp.rename(model)
    shutil.rmtree(old, ignore_errors=True)
    return {"model": str(model), "default": default, "parts": sorted(p.name for p in model.iterdir())}


def _carry_docs(model: Path, tmp: Path) -> None:
    """Part cards and plots of an earlier model folder that the new one lacks carry over (never weights or
    configs), and so do characters the recipe does not make."""
    for doc in model.glob("*/*") if model.is_dir() else []:
        target = tmp / doc.parent.name / doc.name
        if (
            (doc.name == "README.md" or doc.suffix == ".png")
            and target.parent.is_dir()
            and not target.exists()
        ):
            shutil.copy(doc, target)
    for character in (model / "characters").iterdir() if (model / "characters").is_dir() else []:
        if not (tmp / "characters" / character.name).exists():  # characters users added stay
            shutil.copytree(character, tmp / "characters" / character.name)


def _corpus_shards(recipe: Recipe) -> int:
    from streamchar.data.synth import plan_jobs

    scfg = recipe.config("corpus").data.synth
    return -(-len(plan_jobs(scfg)) // max(1, scfg.clips_per_shard))


def _stage_overrides(recipe: Recipe, stage: str) -> list[str]:
    shared = recipe.stage1_overrides if stage.startswith("stage1") else []
    return shared + list(recipe.settings(stage).get("overrides") or [])


PRIOR_WHAT = {
    "prior-audio": ("the acoustic prior", "the chunk's frame-aligned units (phoneme x F0 bucket) and speaking flag, "
                    "after the units of the chunk's context, and a 3 s reference voice", "audio latents (log-mel)",
                    "L1 on the normalised mel latents"),
    "prior-video": ("the video prior", "the reference latent, the last motion latent and the chunk's audio "
                    "latents", "video latents", "MSE, weighted inside the renderer's mouth box"),
    "prior-video-tune": ("the video prior", "the reference latent, the last motion latent and the chunk's audio "
                         "latents", "video latents", "MSE, weighted inside the renderer's mouth box, then fine-tuned "
                         "reading last latents perturbed by noise (`train.prior_video.last_noise`), so that fed its own "
                         "output it pulls a drifted frame back to the reference instead of carrying the drift"),
}  # fmt: skip


def prior_card(recipe: Recipe, stage: str, run: Path) -> str:
    """A prior's model card, from its run's own records."""
    name, inputs, outputs, loss = PRIOR_WHAT[stage]
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "final" / "prior.json").read_text())["arch"]
    heldout = summary.get("heldout") or {}
    figures = ", ".join(f"{k} {v}" for k, v in heldout.items() if k != "step")
    minutes = recipe.settings(stage).get("cpu_minutes", "–")
    return f"""# StreamChar {recipe.name}: {name}

A small deterministic regression network that maps {inputs} to the prior mean of a chunk's {outputs}. The DiT
denoises around this mean (DESIGN.md section 7, `streamchar/denoiser/prior.py`); with `engine.refine=false`
the engine plays the priors alone (the "prior alone" row of the results).

- Parameters: {summary["parameters"] / 1e6:.2f}M; constructor arguments: `{json.dumps(arch)}` (`prior.json`).
- Training: `streamchar train prior --which {stage.split("-")[1]}` ({loss}), {summary["step"]} steps at
  {summary["precision"]} precision; about {minutes} CPU minutes in `streamchar recipe {recipe.name}`.
- Held-out ({summary.get("heldout_split", "test")} split) at the last step: {figures}; the curve is `curve.png`.
- Streaming: chunk-local (a chunk's mean depends on that chunk and what came before it, never on what comes
  after), so streamed output equals offline output.
- Limitations: regression over-smooths (the DiT adds the detail back); it knows only the synthetic corpus's
  espeak voices and drawing styles.
"""


def _stage2_start(recipe: Recipe) -> str:
    init = _init_stage(recipe, "stage2-2step")
    return (
        "started from the teacher itself (2 steps)"
        if init == "teacher"
        else f"started from the {init} student"
    )


def model_card(recipe: Recipe, record: dict) -> str:
    """The model folder's README: what it holds, the data, the budget, intended use and limitations."""
    cfg = recipe.config("latents")
    synth, size = cfg.data.synth, cfg.video_codec.image_size
    latent, channels = size // 8, cfg.video_codec.latent_channels
    corpus_shards = _corpus_shards(recipe)
    limit = cfg.data.encode.max_shards
    cache_shards = (f"the first {limit} of its {corpus_shards} shards" if limit is not None and limit < corpus_shards
                    else f"all {corpus_shards} of its shards")  # fmt: skip
    budget = "\n".join(
        f"| {stage} | {' '.join(_stage_overrides(recipe, stage)) or 'defaults'} | "
        f"{recipe.settings(stage).get('cpu_minutes', '–')} |"
        for stage in STAGES
        if stage not in ("ship", "results")
    )
    return f"""# StreamChar {recipe.name} model

Loaded by name: `streamchar generate --model {recipe.name} ...`, `streamchar serve --model {recipe.name}`,
`streamchar demo` (its default). `model.json` maps each config path to a part of this folder; the default
denoiser is `{record["parts"]["engine.denoiser_path"]}`, and any other (`{"`, `".join(record["denoisers"])}`) is
chosen with `engine.denoiser_path=checkpoints/{recipe.name}/NAME`.

| part | what |
|---|---|
| `vae/` | video autoencoder (AutoencoderTiny), {size}x{size} frames to {latent}x{latent}x{channels} latents |
| `orchestrator/` | unit language model (transcript -> one phoneme x F0 unit per audio frame), Hugging Face folder |
| `prior-audio/`, `prior-video/` | the priors: regression networks whose means carry each chunk's content (own cards) |
| `teacher/` | the joint audio-video DiT (EMA weights, bf16) that denoises around the priors' means from a shallow start |
| `student-s1-*step/` | stage-1 students (ODE-pair regression + DMD; one branch, `distilled.json`) at 1, 2 and 4 steps |
| `student-s2-2step/` | the stage-2 student: {_stage2_start(recipe)}, fine-tuned on its own rollouts |
| `characters/` | shipped characters (reference image, 3 s of voice, voice prompt) from training identities |

**Data.** The synthetic talking-character corpus (`streamchar data synth`, seed {synth.seed}): {synth.num_characters}
procedurally drawn characters with espeak-ng voices, {synth.heldout_identity_fraction:.0%} of identities and
{synth.heldout_sentence_fraction:.0%} of sentences held out. The priors and denoisers saw the latent cache of
{cache_shards}.

**Training budget** (`streamchar recipe {recipe.name}`, configs/recipes/{recipe.name}.yaml; minutes measured on a
2-core CPU without a GPU):

| stage | settings | CPU minutes |
|---|---|---|
{budget}

**Intended use.** Tests, demos, the CPU real-time path, and a starting point for longer training (every run
folder resumes). **How it speaks.** The priors carry each chunk's content (the words, the lip shapes) and the
denoisers refine their means (DESIGN.md section 7); what the instruments hear and see is measured after
shipping by the `results` stage (`docs/results/recipe_short`, `recipe_long`, `recipe_unseen`, each stamped
with this folder's `model.json` digest). **Limitations.** A CPU-budget model: it knows only the synthetic
corpus's drawing styles and espeak voices, English text, and {size}x{size} video; its speech goes through a
log-mel codec and Griffin-Lim, which caps how clean it sounds.
"""


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[Recipe], bool]
    run: Callable[[Recipe], dict]


def stages() -> list[Stage]:
    return [
        Stage("corpus", _corpus_done, _run_corpus),
        Stage("vae", lambda r: _finished(r.run_folder("vae"), "codec"), _run_vae),
        Stage("latents", _latents_done, _run_latents),
        *[Stage(stage, lambda r, stage=stage: _finished(r.run_folder(stage), "final"), _run_prior(kind, stage))
          for kind, stage in (("audio", "prior-audio"), ("video", "prior-video"), ("video", "prior-video-tune"))],
        Stage("teacher", lambda r: _finished(r.run_folder("teacher")), _run_teacher),
        Stage("orchestrator", lambda r: _finished(r.run_folder("orchestrator"), "final"), _run_orchestrator),
        Stage("instruments", _instruments_done, _run_instruments),  # stage 2 reads speech with the recognizer
        *[Stage(s, lambda r, s=s: _finished(r.run_folder(s), "student"), _stage1(s))
          for s in ("stage1-2step", "stage1-1step", "stage1-4step")],
        Stage("stage2-2step", lambda r: _finished(r.run_folder("stage2-2step"), "student"), _run_stage2),
        Stage("ship", _ship_done, _run_ship),
        Stage("results", _results_done, _run_results),
    ]  # fmt: skip


@contextlib.contextmanager
def _own_accelerator_state():
    """Each stage builds its own ``Accelerator``; accelerate keeps one process-wide state and refuses a second
    mixed precision, so a stage's state is dropped before and after it (the process group is kept)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state()


def _device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def plan(recipe: Recipe) -> list[dict]:
    """Each stage's status (done or to run), its recorded wall time and its CPU estimate."""
    record = _read_record(recipe)
    rows, pending = [], set()
    for stage in stages():
        settings = recipe.settings(stage.name)
        # to run: not made yet, made from inputs that changed since, or reading a stage that is to run
        done = (stage.done(recipe) and not _stale(recipe, stage.name, record)
                and not pending & set(_inputs(recipe, stage.name)))  # fmt: skip
        if not done:
            pending.add(stage.name)
        rows.append({"stage": stage.name, "done": done, "seconds": record.get(stage.name, {}).get("seconds"),
                     "device": record.get(stage.name, {}).get("device"), "cpu_minutes": settings.get("cpu_minutes"),
                     "note": settings.get("gpu_note")})  # fmt: skip
    return rows


def _record_path(recipe: Recipe) -> Path:
    return recipe.folders["runs"] / f"recipe-{recipe.name}.json"


def _write_record(recipe: Recipe, record: dict) -> None:
    path = _record_path(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def _read_record(recipe: Recipe) -> dict:
    path = _record_path(recipe)
    return json.loads(path.read_text()) if path.is_file() else {}


def run_recipe(
    recipe: Recipe, only: list[str] | None = None, until: str | None = None, force: bool = False
) -> list[dict]:
    """Run the stages in order (``only`` some; stop after ``until``), skipping finished ones unless ``force``."""
    names = [s.name for s in stages()]
    for name in (only or []) + ([until] if until else []):
        if name not in names:
            raise RecipeError(f"Unknown stage '{name}'; stages are {', '.join(names)}.")
    chosen = names[: names.index(until) + 1] if until else names
    chosen = [n for n in chosen if not only or n in only]
    device = _device()
    record = _read_record(recipe)
    for stage in stages():
        if stage.name not in chosen:
            continue
        if stage.done(recipe) and not force:
            if not _stale(recipe, stage.name, record):
                if stage.name in INPUTS and "inputs" not in record.get(stage.name, {}):
                    record.setdefault(stage.name, {}).update(_built_from(recipe, stage.name))
                    _write_record(recipe, record)
                logger.info("%s: done, skipped", stage.name)
                continue
            logger.info("%s: built from inputs that have changed since; running it again", stage.name)
            _move_aside(_outputs(recipe, stage.name))
        settings = recipe.settings(stage.name)
        if device == "cpu" and settings.get("cpu_minutes"):
            logger.info("%s: about %s min on a 2-core CPU (no GPU found)%s", stage.name, settings["cpu_minutes"],
                        f"; {settings['gpu_note']}" if settings.get("gpu_note") else "")  # fmt: skip
        start = time.perf_counter()
        earlier = record.get(stage.name, {}).get("partial", 0.0)  # time spent in interrupted attempts
        try:
            with _own_accelerator_state():
                summary = stage.run(recipe)
        except BaseException:
            record[stage.name] = {
                "partial": round(earlier + time.perf_counter() - start, 1),
                "device": device,
            }
            _write_record(recipe, record)
            raise
        seconds = time.perf_counter() - start
        if not stage.done(recipe):
            raise RecipeError(
                f"Stage {stage.name} ended without a finished output; run the recipe again to resume it."
            )
        record[stage.name] = {"seconds": round(earlier + seconds, 1), "device": device,
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        if stage.name in INPUTS:
            record[stage.name].update(_built_from(recipe, stage.name))
        _write_record(recipe, record)
        logger.info(
            "%s: finished in %.1f min (%s)", stage.name, seconds / 60, json.dumps(summary, default=str)[:300]
        )
    return plan(recipe)


def describe_plan(rows: list[dict]) -> str:
    """The stage table the command prints, with the total wall time."""
    lines = [f"{'stage':<20} {'status':<8} {'wall':>9}  {'device':<10} cpu estimate"]
    total = 0.0
    for row in rows:
        wall = f"{row['seconds'] / 60:.1f} min" if row["seconds"] is not None else "–"
        total += row["seconds"] or 0.0
        estimate = f"{row['cpu_minutes']} min" if row["cpu_minutes"] else ""
        lines.append(f"{row['stage']:<20} {'done' if row['done'] else 'to run':<8} {wall:>9}  "
                     f"{row['device'] or '':<10} {estimate}")  # fmt: skip
    lines.append(f"recorded wall time of the stages run by this recipe: {total / 60:.1f} min")
    estimated = sum(r["cpu_minutes"] or 0 for r in rows)
    lines.append(f"the whole recipe on a 2-core CPU (measured per stage): about {estimated / 60:.1f} h")
    return "\n".join(lines)
