"""``ship``: the model folder a recipe makes, and the cards that describe it.

The folder holds the video codec, the orchestrator, the priors, the teacher's EMA weights and the students (in
bfloat16), the shipped characters, ``model.json`` (which config path each part sets, and a digest of each run
it came from) and a ``README.md`` model card. The cards state what the recipe file and the run's own records
say: the corpus and latent cache records, the codec's record, the students' ``distilled.json``, the
characters' ``character.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from streamchar.config import MODEL_FILE, override_text
from streamchar.recipe.spec import SHIPPED_PRIOR_STAGES, STAGES, TURNS, Recipe

MODEL_PARTS = {"video_codec.path": "vae", "orchestrator.path": "orchestrator", "engine.characters_dir": "characters",
               "distill.teacher": "teacher", "prior.audio_path": "prior-audio",
               "prior.video_path": "prior-video"}  # fmt: skip
TRAINED = ("vae", "prior-audio", "prior-video", "prior-video-tune", "prior-video-long", "teacher", "orchestrator",
           "stage1-1step", "stage1-2step", "stage1-4step", "stage2-2step")  # fmt: skip
STUDENTS = {"stage1-1step": "student-s1-1step", "stage1-2step": "student-s1-2step",
            "stage1-4step": "student-s1-4step", "stage2-2step": "student-s2-2step"}  # fmt: skip


def run_fingerprint(run: Path) -> str | None:
    """A digest of a run's exported weights (its export folder, else its newest checkpoint) and summary, so
    that a retrained run is shipped again even at the same step count."""
    from streamchar.checkpoints import list_checkpoints

    if not (run / "summary.json").is_file():
        return None
    folders = [run / name for name in ("codec", "final", "student") if (run / name).is_dir()]
    folders = folders or list_checkpoints(run)[-1:]
    digest = hashlib.sha256((run / "summary.json").read_bytes())
    for path in sorted(p for folder in folders for p in folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_fingerprint(model: Path) -> str | None:
    """A digest of a model folder's ``model.json`` (which names the digests of the runs it came from)."""
    record = model / MODEL_FILE
    return hashlib.sha256(record.read_bytes()).hexdigest()[:16] if record.is_file() else None


def is_shipped(model: Path) -> bool:
    """The model folder exists and every run it came from is unchanged since."""
    record = model / MODEL_FILE
    if not record.is_file():
        return False
    try:
        sources = json.loads(record.read_text()).get("sources", {})
    except ValueError:
        return False
    return bool(sources) and all(run_fingerprint(Path(src)) == mark for src, mark in sources.items())


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


def ship_model(recipe: Recipe) -> dict:
    """Write the model folder: codec, orchestrator, teacher (EMA), students, characters, model.json, README."""
    from streamchar.checkpoints import list_checkpoints
    from streamchar.engine.characters import export_character

    model, runs = recipe.folders["model"], {s: recipe.run_folder(s) for s in TRAINED}
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
    for kind, stage in SHIPPED_PRIOR_STAGES.items():
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
    for stage, name in STUDENTS.items():
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
        # how the default student is played, chosen on development clips (docs/results/formulations.md)
        "settings": dict(recipe.settings("ship").get("settings", {})),
        "sources": {str(runs[s]): run_fingerprint(runs[s]) for s in runs},
    }  # fmt: skip
    (tmp / MODEL_FILE).write_text(json.dumps(record, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(recipe, record, tmp))
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


# -- the cards -----------------------------------------------------------------------------------------
PRIOR_WHAT = {
    "prior-audio": ("the acoustic prior", "the chunk's frame-aligned units (phoneme x F0 bucket, each embedded as "
                    "itself plus its phoneme plus its F0 bucket when `unit_buckets` is set) and speaking flag, after "
                    "the units of the chunk's context, and a 3 s reference voice", "audio latents (log-mel)",
                    "L1 on the normalised mel latents"),
    "prior-video": ("the video prior", "the reference latent, the last motion latent and the chunk's audio "
                    "latents", "video latents", "MSE, weighted inside the renderer's mouth box"),
    "prior-video-tune": ("the video prior", "the reference latent, the last motion latent and the chunk's audio "
                         "latents", "video latents", "MSE, weighted inside the renderer's mouth box, then fine-tuned "
                         "reading last latents perturbed by noise (`train.prior_video.last_noise`), so that fed its own "
                         "output it pulls a drifted frame back to the reference instead of carrying the drift"),
    "prior-video-long": ("the video prior", "the reference latent, the last motion latent and the chunk's audio "
                         "latents", "video latents", "MSE, weighted inside the renderer's mouth box, fine-tuned reading "
                         "last latents perturbed by noise (`train.prior_video.last_noise`) and continued longer than "
                         "the prior the DiT was trained on (sharper; the engine reads its last latent with noise, "
                         "`engine.prior_last_noise`, which keeps long sessions on the face, pulled toward the reference "
                         "outside the mouth box first, `engine.prior_anchor`)"),
}  # fmt: skip


def prior_card(recipe: Recipe, stage: str, run: Path) -> str:
    """A prior's model card, from its run's own records."""
    name, inputs, outputs, loss = PRIOR_WHAT[stage]
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "final" / "prior.json").read_text())["arch"]
    heldout = summary.get("heldout") or {}
    figures = ", ".join(f"{k} {v}" for k, v in heldout.items() if k != "step")
    minutes = recipe.settings(stage).get("cpu_minutes", "–")
    probe = summary.get("phoneme_probe")
    if probe:  # the acoustic prior's phonetic loss (train.prior_audio.phoneme_weight)
        weight = json.loads((run / "train_prior.json").read_text()).get("phoneme_weight")
        loss += (f", plus {weight} x the cross-entropy of a frozen frame phoneme probe reading the means against "
                 f"the units' phonemes (the probe fitted on the ground-truth train speech at the start of the run: "
                 f"accuracy {probe['train_accuracy']} train, {probe['test_accuracy']} held-out)")  # fmt: skip
    init = (
        json.loads((run / "train_prior.json").read_text()).get("init")
        if (run / "train_prior.json").is_file()
        else None
    )
    started = f" from the weights in `{init}`" if init else ""
    return f"""# StreamChar {recipe.name}: {name}

A small deterministic regression network that maps {inputs} to the prior mean of a chunk's {outputs}. The DiT
denoises around this mean (DESIGN.md section 7, `streamchar/denoiser/prior.py`); with `engine.refine=false`
the engine plays the priors alone (the "prior alone" row of the results).

- Parameters: {summary["parameters"] / 1e6:.2f}M; constructor arguments: `{json.dumps(arch)}` (`prior.json`).
- Training: `streamchar train prior --which {stage.split("-")[1]}` ({loss}), {summary["step"]} steps{started} at
  {summary["precision"]} precision; about {minutes} CPU minutes in `streamchar recipe {recipe.name}`.
- Held-out ({summary.get("heldout_split", "test")} split) at the last step: {figures}; the curve is `curve.png`.
- Streaming: chunk-local (a chunk's mean depends on that chunk and what came before it, never on what comes
  after), so streamed output equals offline output.
- Limitations: regression over-smooths (the DiT adds the detail back); it knows only the synthetic corpus's
  espeak voices and drawing styles.
"""


def _stage2_start(recipe: Recipe) -> str:
    init = recipe.init_stage("stage2-2step")
    return (
        "started from the teacher itself (2 steps)"
        if init == "teacher"
        else f"started from the {init} student"
    )


def _teacher_start(folder: Path) -> str:
    """Where the shipped teacher's samples start, from its ``denoiser.json``."""
    arch = json.loads((folder / "teacher" / "denoiser.json").read_text())
    video = arch.get("sample_start_video")
    if video is None or video == arch.get("sample_start"):
        return " from a shallow start"
    return (
        f": the audio from a shallow start (t = {arch['sample_start']:g}), the video from t = {video:g}"
        f"{' (noise), predicting the clean residual' if arch.get('video_prediction') == 'x0' else ''}"
    )


def _in_words(numbers: list) -> str:
    """``[1, 2, 4]`` as ``1, 2 and 4``."""
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _cache_shards(recipe: Recipe) -> str:
    """Which corpus shards the latent cache gave the priors and denoisers video of, from the two records."""
    from streamchar.data.latents import MANIFEST as LATENTS_MANIFEST
    from streamchar.data.shards import MANIFEST as CORPUS_MANIFEST

    corpus = json.loads((recipe.folders["corpus"] / CORPUS_MANIFEST).read_text())
    cache = json.loads((recipe.folders["latents"] / LATENTS_MANIFEST).read_text())
    names = sorted(shard["name"] for shard in corpus["shards"])
    seen = sorted({clip["shard"] for clip in cache["clips"] if clip.get("video", True)})
    if len(seen) == len(names):
        return f"all {len(names)} of its shards"
    return f"{'the first ' if seen == names[: len(seen)] else ''}{len(seen)} of its {len(names)} shards"


SETTING_NOTES = {
    "engine.keep_correction": "`engine.keep_correction` is the share of the student's correction of the video and "
                              "audio priors' means that is kept",
    "engine.audio_correction=timbre": "`engine.audio_correction=timbre` keeps only the audio correction's mean "
                                      "spectrum over each chunk (the voice), not its changes in time (the phonemes)",
    "engine.audio_correction=whole": "`engine.audio_correction=whole` plays the student's whole correction of the "
                                     "acoustic prior's means",
    "engine.video_noise_share": "`engine.video_noise_share` is the share of a window's video noise its frames have in "
                                "common, as the teacher was trained (`train.teacher.video_noise_share`)",
    "engine.video_correction_margin": "`engine.video_correction_margin` widens the mouth box the video correction "
                                      "stays off by that fraction of the frame on every side, since the video decoder "
                                      "carries a cell's correction into its neighbours",
    "engine.timbre_memory": "`engine.timbre_memory` makes that spectrum a running average over the session's chunks",
    "engine.prior_last_noise": "`engine.prior_last_noise` is the noise on the last motion latent the video prior "
                               "reads, which keeps long sessions on the character's face",
    "engine.video_correction": "`engine.video_correction=outside_mouth` plays the video correction only outside the "
                               "mouth box (`engine.mouth_box`), so the video prior keeps the lip shapes",
    "engine.video_correction_feedback": "`engine.video_correction_feedback=false` shows that correction and feeds "
                                        "the next chunk the video prior's means alone, so it never compounds and "
                                        "the audio does not depend on it",
    "engine.prior_anchor": "`engine.prior_anchor` moves that last latent toward the reference outside the mouth "
                           "box before the noise, so a session stays as close to the character as its first seconds",
    "engine.video_correction_time": "`engine.video_correction_time=mean` plays the video correction's mean over "
                                    "each chunk's frames, which holds still where each frame's own flickers",
    "engine.video_correction_memory": "`engine.video_correction_memory` averages it over the session's chunks",
    "engine.video_correction_time=session": "`engine.video_correction_time=session` plays the video correction's "
                                            "mean over each chunk's frames averaged over all the session's chunks so "
                                            "far, which settles on what it adds to the whole session",
    "engine.video_correction_detail": "`engine.video_correction_detail` plays only its spatial detail (minus its "
                                      "mean over that many cells around each), which sharpens the face without "
                                      "moving a long session away from the character's own frames",
    "engine.audio_noise_scale": "`engine.audio_noise_scale` scales the audio start noise (a sampling temperature), "
                                "which brings the audio correction nearer the likeliest speech",
    "engine.video_correction_skip": "`engine.video_correction_skip` shows a session's first chunks as the video "
                                    "prior made them, their correction counted as zero in that average, as the "
                                    "first chunk's correction (made before any motion frames) is blotchy",
}  # fmt: skip


def _settings_text(record: dict) -> str:
    """The model card's sentence on the settings ``model.json`` plays the model with (none: empty)."""
    settings = record.get("settings") or {}
    if not settings:
        return ""
    listed = ", ".join(f"`{override_text(key, value)}`" for key, value in settings.items())
    # a note of the setting's value (`KEY=VALUE`) where there is one, else of the setting
    found = (SETTING_NOTES.get(f"{key}={value}") or SETTING_NOTES.get(key) for key, value in settings.items())
    notes = "; ".join(note for note in found if note)
    return (
        f"\nIt is played with {listed} (loading it by name applies them; a later `key=value` overrides "
        f"them). {notes + '. ' if notes else ''}Chosen on held-out clips the results table does not use."
    )


def model_card(recipe: Recipe, record: dict, folder: Path) -> str:
    """The model folder's README (``folder`` holds the parts): what it holds, the data, the budget, intended use
    and limitations."""
    from streamchar.codecs.video import CODEC_META
    from streamchar.data.shards import MANIFEST as CORPUS_MANIFEST

    corpus = json.loads((recipe.folders["corpus"] / CORPUS_MANIFEST).read_text())
    synth = corpus["synth"]
    codec = json.loads((folder / "vae" / CODEC_META).read_text())
    codec_class = json.loads((folder / "vae" / "config.json").read_text()).get("_class_name", codec["kind"])
    size, channels = codec["image_size"], codec["latent_channels"]
    latent = size // codec["spatial_factor"]
    s1_steps = _in_words(sorted(json.loads((folder / name / "distilled.json").read_text())["steps"]
                                for stage, name in STUDENTS.items() if stage.startswith("stage1")))  # fmt: skip
    voice = max(
        json.loads(path.read_text())["voice_seconds"] for path in folder.glob("characters/*/character.json")
    )
    budget = "\n".join(
        f"| {stage} | {' '.join(recipe.stage_overrides(stage)) or 'defaults'} | "
        f"{recipe.settings(stage).get('cpu_minutes', '–')} |"
        for stage in STAGES
        if stage not in ("ship", "results")
    )
    return f"""# StreamChar {recipe.name} model

Loaded by name: `streamchar generate --model {recipe.name} ...`, `streamchar serve --model {recipe.name}`,
`streamchar demo` (its default). `model.json` maps each config path to a part of this folder; the default
denoiser is `{record["parts"]["engine.denoiser_path"]}`, and any other (`{"`, `".join(record["denoisers"])}`) is
chosen with `engine.denoiser_path=checkpoints/{recipe.name}/NAME`.{_settings_text(record)}

| part | what |
|---|---|
| `vae/` | video autoencoder ({codec_class}), {size}x{size} frames to {latent}x{latent}x{channels} latents |
| `orchestrator/` | unit language model (transcript -> one phoneme x F0 unit per audio frame), Hugging Face folder |
| `prior-audio/`, `prior-video/` | the priors: regression networks whose means carry each chunk's content (own cards) |
| `teacher/` | the joint audio-video DiT (EMA weights, bf16) that denoises around the priors' means{_teacher_start(folder)} |
| `student-s1-*step/` | stage-1 students (ODE-pair regression + DMD; one branch, `distilled.json`) at {s1_steps} steps |
| `student-s2-2step/` | the stage-2 student: {_stage2_start(recipe)}, fine-tuned on its own rollouts |
| `characters/` | shipped characters (reference image, {voice:g} s of voice, voice prompt) from training identities |

**Data.** The synthetic talking-character corpus (`streamchar data synth`, seed {corpus["seed"]}): {synth["num_characters"]}
procedurally drawn characters with espeak-ng voices, {synth["heldout_identity_fraction"]:.0%} of identities and
{synth["heldout_sentence_fraction"]:.0%} of sentences held out. The priors and denoisers saw the latent cache of
{_cache_shards(recipe)}.

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
