"""``streamchar recipe``: every stage end to end at a micro budget, skipping, resuming, the model folder."""

from __future__ import annotations

import json

import pytest
import yaml

from streamchar.config import ConfigError, load_config, model_overrides
from streamchar.recipe.run import describe_plan, plan, run_recipe
from streamchar.recipe.spec import STAGES, Recipe, RecipeError
from tests.conftest import TINY_CORPUS_OVERRIDES

MICRO = {
    "preset": "tiny",
    "folders": {"corpus": "corpus", "latents": "latents", "eval_cache": "eval_cache", "runs": "runs",
                "instruments": "instruments", "model": "model", "results": "results"},
    "overrides": TINY_CORPUS_OVERRIDES + [
        "video_codec.arch.encoder_block_out_channels=[8,8,8,8]", "video_codec.arch.decoder_block_out_channels=[8,8,8,8]",
        "denoiser.width=32", "denoiser.depth=2", "denoiser.heads=2", "orchestrator.hidden_size=32",
        "orchestrator.layers=2", "orchestrator.heads=2", "orchestrator.kv_heads=1", "orchestrator.intermediate_size=64",
        "engine.steps=2", "sample.steps=2", "train.vae.mixed_precision=no", "train.teacher.mixed_precision=no",
        "train.orchestrator.mixed_precision=no", "distill.mixed_precision=no",
        "denoiser.formulation=residual", "denoiser.residual_scale_video=0.5", "denoiser.residual_scale_audio=0.5",
        "prior.audio.width=32", "prior.audio.speaker_dim=8", "prior.audio.dilations=[1,2]",
        "prior.video.channels=[8,8,16]", "prior.video.audio_width=16", "train.prior_audio.mixed_precision=no",
        "train.prior_video.mixed_precision=no",
        "engine.compile=off",  # the results' engines run eager (tests/test_fastpath.py checks the compiled step)
    ],
    "stages": {
        "vae": {"overrides": ["train.vae.steps=2", "train.vae.batch_size=2", "train.vae.crop_size=32",
                              "train.vae.eval_frames=4", "train.vae.frames_per_clip=2", "train.vae.warmup_steps=1"]},
        "prior-audio": {"overrides": ["train.prior_audio.steps=2", "train.prior_audio.batch_size=4",
                                      "train.prior_audio.eval_windows=4", "train.prior_audio.warmup_steps=1",
                                      "train.prior_audio.phoneme_probe_steps=5"]},
        "prior-video": {"overrides": ["train.prior_video.steps=2", "train.prior_video.batch_size=2",
                                      "train.prior_video.eval_windows=4", "train.prior_video.warmup_steps=1",
                                      "train.prior_video.rollout_eval_chunks=2"]},
        "prior-video-tune": {"overrides": ["train.prior_video.steps=2", "train.prior_video.batch_size=2",
                                           "train.prior_video.eval_windows=4", "train.prior_video.warmup_steps=1",
                                           "train.prior_video.last_noise=0.5",
                                           "train.prior_video.rollout_eval_chunks=2"]},
        "prior-video-long": {"overrides": ["train.prior_video.steps=2", "train.prior_video.batch_size=2",
                                           "train.prior_video.eval_windows=4", "train.prior_video.warmup_steps=1",
                                           "train.prior_video.last_noise=0.5",
                                           "train.prior_video.rollout_eval_chunks=2"]},
        "teacher": {"overrides": ["train.teacher.steps=2", "train.teacher.batch_size=2", "train.teacher.eval_every=2",
                                  "train.teacher.eval_windows=2", "train.teacher.warmup_steps=1"]},
        "orchestrator": {"overrides": ["train.orchestrator.steps=2", "train.orchestrator.batch_size=2",
                                       "train.orchestrator.eval_every=2", "train.orchestrator.eval_sequences=2",
                                       "train.orchestrator.max_tokens=256", "train.orchestrator.warmup_steps=1"]},
        "stage1-2step": {"overrides": ["distill.student_steps=2"]},
        "stage1-1step": {"overrides": ["distill.student_steps=1"]},
        "stage1-4step": {"overrides": ["distill.student_steps=4"]},
        "stage2-2step": {"overrides": ["distill.student_steps=2", "distill.rollout_chunks=2", "distill.rollout_steps=1",
                                       "distill.batch_size=1"]},
        "ship": {"characters": {"ada": 0, "ben": 1}, "settings": {"engine.keep_correction": [0.5, 0.75],
                                                               "engine.audio_correction": "whole"}},
        "instruments": {"steps": {"recognizer": 2, "sync": 2, "identity": 2, "speaker": 2, "mouth": 2}},
        "results": {"short_clips": 1, "teacher_clips": 1, "long_minutes": 0.15, "segment_seconds": 4,
                    "teacher_steps": 4, "unseen_character": "ada", "unseen_sentences": 1},
    },
    "stage1_overrides": ["distill.pairs=2", "distill.pair_teacher_steps=4", "distill.regression_steps=1",
                         "distill.dmd_steps=1", "distill.batch_size=2", "distill.warmup_steps=0"],
}  # fmt: skip


def _write(tmp_path, recipe: dict):
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_runs_every_stage_then_skips_them_and_ships_a_loadable_model(tmp_path):
    path = _write(tmp_path, MICRO)
    recipe = Recipe.load(path, tmp_path)
    assert [row["done"] for row in plan(recipe)] == [False] * len(STAGES)
    rows = run_recipe(recipe)
    assert all(row["done"] for row in rows), rows
    record = json.loads((tmp_path / "runs" / "recipe-micro.json").read_text())
    assert set(record) == set(STAGES) and all(r["device"] == "cpu" for r in record.values())
    assert "whole recipe" in describe_plan(rows)

    # a second run skips every stage: nothing is rewritten
    stamp = (tmp_path / "model" / "model.json").stat().st_mtime_ns
    run_recipe(recipe)
    assert json.loads((tmp_path / "runs" / "recipe-micro.json").read_text()) == record
    assert (tmp_path / "model" / "model.json").stat().st_mtime_ns == stamp

    # the model folder loads by path: every config path points into it, the default is the stage-2 student
    preset, parts = model_overrides(tmp_path / "model")
    cfg = load_config(
        preset,
        [o for o in MICRO["overrides"] if not o.startswith("video_codec.path")]
        + parts
        + ["engine.compile=off"],
    )
    assert cfg.engine.denoiser_path.endswith("student-s2-2step")
    assert cfg.engine.keep_correction == [0.5, 0.75]  # the settings it is played with, from model.json
    assert cfg.video_codec.path == str(tmp_path / "model" / "vae")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"vae", "orchestrator", "prior-audio", "prior-video", "teacher", "student-s1-1step", "student-s1-2step",
            "student-s1-4step", "student-s2-2step", "characters", "model.json", "README.md"} <= names  # fmt: skip
    assert cfg.prior.audio_path == str(tmp_path / "model" / "prior-audio")
    card = (tmp_path / "model" / "README.md").read_text()  # its figures come from the run's own records
    assert "`engine.keep_correction=[0.5,0.75]`" in card
    # the note of the setting's value, not of another value
    assert "plays the student's whole correction" in card and "mean spectrum" not in card
    assert "64x64 frames to 8x8x4 latents" in card and "): 4\nprocedurally drawn characters" in card
    assert "at 1, 2 and 4 steps" in card and "shards." in card
    assert "acoustic prior" in (tmp_path / "model" / "prior-audio" / "README.md").read_text()
    assert "last_noise" in (tmp_path / "model" / "prior-video" / "README.md").read_text()
    assert (
        json.loads((tmp_path / "model" / "prior-video" / "train_prior.json").read_text())["last_noise"] == 0.5
    )
    # the engine plays the longer-trained video prior; the teacher was trained around the tuned one's means
    shipped = (tmp_path / "model" / "prior-video" / "model.safetensors").read_bytes()
    assert (
        shipped == (tmp_path / "runs" / "micro-prior-video-long" / "final" / "model.safetensors").read_bytes()
    )
    assert (
        shipped != (tmp_path / "runs" / "micro-prior-video-tune" / "final" / "model.safetensors").read_bytes()
    )
    assert set(record["teacher"]["inputs"]) == {"latents", "prior-audio", "prior-video-tune"}
    from streamchar.engine.engine import Engine

    engine = Engine.from_config(cfg)
    assert engine.distilled["steps"] == 2
    with engine.session([engine.character("ada")]) as session:
        session.push_text("hello there", final=True)
        assert sum(1 for _ in session) > 0

    # the results hold the teacher, the students and the three ablations
    short = json.loads((tmp_path / "results" / "recipe_short" / "report.json").read_text())
    rows = {"teacher@4 (1 clip)", "ground_truth (1 clip)", "s2_2step", "prior_alone", "s2_2step_keepall", "s1_2step",
            "s2_2step_nosink", "s2_2step_nomotion", "s2_2step_norealign", "cascade_espeak",
            "audio_driven_gt_speech", "ground_truth"}  # fmt: skip
    assert rows == set(short["models"])
    assert "teacher@4 (1 clip)" in (tmp_path / "results" / "recipe_short" / "report.md").read_text()
    long = json.loads((tmp_path / "results" / "recipe_long" / "report.json").read_text())
    assert {"s2_2step", "prior_alone"} <= set(long["models"])
    unseen = json.loads((tmp_path / "results" / "recipe_unseen" / "report.json").read_text())
    assert unseen["character"] == "ada" and "per" in unseen["espeak_speech"]

    # a finished run that is deleted is redone, and only that stage and what follows is
    import shutil

    shutil.rmtree(tmp_path / "runs" / "micro-stage2-2step")
    assert [r["stage"] for r in plan(recipe) if not r["done"]] == ["stage2-2step", "ship"]

    # new settings for a prior make it stale, and so everything built from it once it is retrained: the old
    # outputs are moved aside and the stages run again; stages that did not read it stay done
    changed = json.loads(json.dumps(MICRO))
    changed["stages"]["prior-video"]["overrides"].append("train.prior_video.seed=1")
    recipe = Recipe.load(_write(tmp_path, changed), tmp_path)
    assert [r["stage"] for r in plan(recipe) if not r["done"]][0] == "prior-video"
    run_recipe(recipe, until="prior-video")
    stale = [r["stage"] for r in plan(recipe) if not r["done"]]
    assert (
        stale[:4] == ["prior-video-tune", "prior-video-long", "teacher", "stage1-2step"]
        and "orchestrator" not in stale
        and "prior-audio" not in stale
    )
    run_recipe(recipe, until="teacher")
    assert (tmp_path / "runs" / "micro-prior-video.stale").is_dir() and (
        tmp_path / "runs" / "micro-teacher.stale"
    ).is_dir()
    assert [r["stage"] for r in plan(recipe) if not r["done"]][0] == "stage1-2step"


def test_recipe_errors_are_one_line_and_name_the_fix(tmp_path):
    with pytest.raises(RecipeError, match="No recipe 'nope'"):
        Recipe.load("nope")
    bad = dict(MICRO, stages={"teachr": {}})
    with pytest.raises(RecipeError, match="Unknown stage 'teachr'"):
        Recipe.load(_write(tmp_path, bad))
    recipe = Recipe.load(_write(tmp_path, MICRO), tmp_path)
    with pytest.raises(RecipeError, match="Unknown stage 'shipp'"):
        run_recipe(recipe, until="shipp")
    with pytest.raises(ConfigError, match="No model 'nope'"):
        model_overrides("nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        model_overrides(tmp_path / "broken")


def test_shipped_tiny_model_loads_by_name():
    preset, parts = model_overrides("tiny")
    cfg = load_config(preset, parts)
    assert preset == "tiny" and cfg.engine.denoiser_path.endswith("student-s2-2step")
    assert load_config(preset, [*parts, "engine.keep_correction=[1.0,1.0]"]).engine.keep_correction == [
        1.0,
        1.0,
    ]
    assert cfg.orchestrator.path.endswith("tiny/orchestrator") and cfg.distill.teacher.endswith(
        "tiny/teacher"
    )


def test_an_interrupted_stage_keeps_its_time_and_adds_it_when_it_finishes(tmp_path, monkeypatch):
    import streamchar.recipe.run as recipe_module

    state = {"calls": 0, "done": False}

    def run(recipe):
        state["calls"] += 1
        if state["calls"] == 1:
            raise KeyboardInterrupt
        state["done"] = True
        return {}

    stage = recipe_module.Stage("corpus", lambda r: state["done"], run)
    monkeypatch.setattr(recipe_module, "stages", lambda: [stage])
    recipe = Recipe.load(_write(tmp_path, MICRO), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe)
    record = json.loads((tmp_path / "runs" / "recipe-micro.json").read_text())
    assert "partial" in record["corpus"] and "seconds" not in record["corpus"]
    rows = run_recipe(recipe)
    record = json.loads((tmp_path / "runs" / "recipe-micro.json").read_text())
    assert rows[0]["done"] and record["corpus"]["seconds"] >= 0 and "partial" not in record["corpus"]


def test_extra_result_rows_of_missing_models_are_left_out(tmp_path):
    from streamchar.recipe.results import present

    (tmp_path / "old").mkdir()
    kept = f"old={tmp_path / 'old'}:nosink"
    assert present([kept, f"gone={tmp_path / 'gone'}@2"]) == [kept]


def test_stage2_reads_the_stage_it_starts_from(tmp_path):
    """Stage 2 is rebuilt when what it starts from changes: the stage-1 student by default, the teacher with
    ``init: teacher`` (the tiny recipe), and then a changed stage-1 student leaves it alone."""
    from streamchar.recipe.run import _inputs

    recipe = Recipe.load(_write(tmp_path, MICRO), tmp_path)
    assert "stage1-2step" in _inputs(recipe, "stage2-2step") and "teacher" in _inputs(recipe, "stage2-2step")
    from_teacher = json.loads(json.dumps(MICRO))
    from_teacher["stages"]["stage2-2step"]["init"] = "teacher"
    recipe = Recipe.load(_write(tmp_path, from_teacher), tmp_path)
    assert _inputs(recipe, "stage2-2step") == ("teacher", "orchestrator", "instruments")
    assert _inputs(Recipe.load("tiny"), "stage2-2step") == ("teacher", "orchestrator", "instruments")
    assert _inputs(recipe, "prior-video-tune") == ("latents", "prior-audio", "prior-video")
