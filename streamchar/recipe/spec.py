"""A recipe file (``configs/recipes/NAME.yaml``): its folders, overrides and per-stage settings, and the order of
the stages and what each reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from streamchar.config import REPO_ROOT, StreamCharConfig, load_config

STAGES = ("corpus", "vae", "latents", "prior-audio", "prior-video", "prior-video-tune", "prior-video-long", "teacher",
          "orchestrator", "instruments", "stage1-2step", "stage1-1step", "stage1-4step", "stage2-2step", "ship",
          "results")  # fmt: skip
# the stages each stage reads (its inputs); ship and results check theirs by digest themselves
INPUTS = {"vae": ("corpus",), "latents": ("corpus", "vae"), "prior-audio": ("latents",),
          "prior-video": ("latents", "prior-audio"), "prior-video-tune": ("latents", "prior-audio", "prior-video"),
          "prior-video-long": ("latents", "prior-audio", "prior-video-tune"),
          "teacher": ("latents", "prior-audio", "prior-video-tune"),
          "orchestrator": ("corpus",), "instruments": ("corpus",), "stage1-2step": ("teacher",),
          "stage1-1step": ("teacher",), "stage1-4step": ("teacher",),
          "stage2-2step": ("teacher", "orchestrator", "instruments")}  # fmt: skip
# the stage whose prior the later stages and the model folder use: the video prior trained on single windows is
# fine-tuned reading noisy last latents (fed its own output, the window-trained one drifts off the face within
# seconds; the tuned one pulls a drifted frame back: docs/results/formulations.md)
PRIOR_STAGES = {"audio": "prior-audio", "video": "prior-video-tune"}
# the priors the model folder ships (what the engine plays): the tuned video prior continued longer is sharper
# (every short-clip video figure better) but, read clean, slides off the face over minutes; the engine reads it
# with noise on its last latent (engine.prior_last_noise), which holds it. The DiT is trained around the tuned
# prior's means (PRIOR_STAGES); docs/results/formulations.md, "Noise on the last latent the prior reads"
SHIPPED_PRIOR_STAGES = {"audio": "prior-audio", "video": "prior-video-long"}
DEFAULT_INIT = {
    "prior-video-tune": "prior-video",
    "prior-video-long": "prior-video-tune",
    "stage2-2step": "stage1-2step",
}  # what a stage starts from when its settings name no init
TURNS = "turns.jsonl"  # the orchestrator run's turn table (voice prompts)


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

    def stage_overrides(self, stage: str) -> list[str]:
        """The overrides the recipe file gives ``stage`` (the shared stage-1 ones, then its own)."""
        shared = self.stage1_overrides if stage.startswith("stage1") else []
        return shared + list(self.settings(stage).get("overrides") or [])

    def init_stage(self, stage: str) -> str | None:
        """The stage whose output ``stage`` starts from (its ``init`` setting; stage 2: the stage-1 2-step
        student unless the recipe says otherwise)."""
        return self.settings(stage).get("init", DEFAULT_INIT.get(stage))

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
