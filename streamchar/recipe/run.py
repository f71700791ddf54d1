"""Running a recipe: each stage's check that its output is done, its run, the stage table, and the plan and
records of a run (which stage is done, stale or to run; how long each took and on what device)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig
from streamchar.recipe.results import results_done, run_results
from streamchar.recipe.ship import is_shipped, run_fingerprint, ship_model
from streamchar.recipe.spec import INPUTS, Recipe, RecipeError

logger = logging.getLogger(__name__)


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


def _instruments_done(recipe: Recipe) -> bool:
    from streamchar.eval.instruments.train import INSTRUMENTS

    # the results read the evaluation cache too (the test faces are the Fréchet reference)
    cache = recipe.folders["eval_cache"]
    return all((cache / f"{split}.pt").is_file() for split in ("train", "test")) and all(
        (recipe.folders["instruments"] / name / "config.json").is_file() for name in INSTRUMENTS
    )


# -- running the stages ------------------------------------------------------------------------------
def _run_corpus(recipe: Recipe) -> dict:
    from streamchar.data.synth import synth_corpus

    return synth_corpus(recipe.config("corpus"), recipe.folders["corpus"])


def _run_vae(recipe: Recipe) -> dict:
    from streamchar.training.vae import train_vae

    return train_vae(recipe.config("vae"), recipe.folders["corpus"], recipe.run_folder("vae"))


def _run_latents(recipe: Recipe) -> dict:
    from streamchar.data.latents import encode_corpus

    cfg = recipe.config("latents", f"video_codec.path={recipe.run_folder('vae') / 'codec'}")
    return encode_corpus(cfg, recipe.folders["corpus"], recipe.folders["latents"])


def _run_prior(kind: str, stage: str) -> Callable[[Recipe], dict]:
    """Train the ``kind`` prior of ``stage`` (starting from the prior of the stage it starts from, if any)."""

    def run(recipe: Recipe) -> dict:
        from streamchar.training.prior import train_prior

        init = recipe.init_stage(stage)
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

    init = recipe.init_stage("stage2-2step")
    cfg = recipe.config("stage2-2step", f"distill.teacher={recipe.run_folder('teacher')}",
                        f"distill.init={recipe.run_folder(init)}",
                        f"orchestrator.path={recipe.run_folder('orchestrator') / 'final'}",
                        f"distill.phoneme_reader={recipe.folders['instruments'] / 'recognizer'}")  # fmt: skip
    return distill_stage2(cfg, recipe.folders["latents"], recipe.run_folder("stage2-2step"))


def _run_instruments(recipe: Recipe) -> dict:
    from streamchar.eval.instruments.train import INSTRUMENTS, train_instrument
    from streamchar.eval.metrics.features import build_eval_cache

    cache = build_eval_cache(recipe.folders["corpus"], recipe.folders["eval_cache"])
    scores = {}
    for name in INSTRUMENTS:
        if (recipe.folders["instruments"] / name / "config.json").is_file():
            continue
        steps = recipe.settings("instruments").get("steps", {}).get(name)
        scores[name] = train_instrument(name, cache, recipe.folders["instruments"], steps,
                                        recipe.folders["runs"] / "eval")  # fmt: skip
    return scores


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
        from streamchar.eval.instruments.train import INSTRUMENTS

        return _digest_files([recipe.folders["instruments"] / name / "config.json" for name in INSTRUMENTS])
    return run_fingerprint(recipe.run_folder(stage))


def _settings_digest(recipe: Recipe, stage: str) -> str:
    settings = {"overrides": recipe.overrides + recipe.stage_overrides(stage),
                "init": recipe.settings(stage).get("init")}  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _inputs(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The stages ``stage`` reads: ``INPUTS``, and the stage it starts from (``init``)."""
    init = recipe.init_stage(stage)
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
        from streamchar.eval.instruments.train import INSTRUMENTS

        return [recipe.folders["instruments"] / name for name in INSTRUMENTS]
    return [recipe.run_folder(stage)]


def _move_aside(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            aside = path.with_name(path.name + ".stale")
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            logger.warning("moved %s aside to %s: it was built from inputs that have changed", path, aside)


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
          for kind, stage in (("audio", "prior-audio"), ("video", "prior-video"), ("video", "prior-video-tune"),
                              ("video", "prior-video-long"))],
        Stage("teacher", lambda r: _finished(r.run_folder("teacher")), _run_teacher),
        Stage("orchestrator", lambda r: _finished(r.run_folder("orchestrator"), "final"), _run_orchestrator),
        Stage("instruments", _instruments_done, _run_instruments),  # stage 2 reads speech with the recognizer
        *[Stage(s, lambda r, s=s: _finished(r.run_folder(s), "student"), _stage1(s))
          for s in ("stage1-2step", "stage1-1step", "stage1-4step")],
        Stage("stage2-2step", lambda r: _finished(r.run_folder("stage2-2step"), "student"), _run_stage2),
        Stage("ship", lambda r: is_shipped(r.folders["model"]), ship_model),
        Stage("results", results_done, run_results),
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
