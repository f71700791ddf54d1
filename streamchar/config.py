"""The config: its root (:class:`StreamCharConfig`), presets, loading with overrides, and the paths it names.

The sections are typed dataclasses in :mod:`streamchar.config_sections`; their defaults are the ``tiny``
preset. ``configs/tiny.yaml`` spells it out and ``configs/base.yaml`` overrides what differs for one H100.
Every CLI command loads a preset or a file with ``--config`` and applies ``key=value`` overrides on top; an
unknown key or a value of the wrong type is a :class:`ConfigError` that names the key.

Models never read these objects: small builder functions turn a section into constructor kwargs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from streamchar.config_sections import (
    AudioCodecConfig,
    DataConfig,
    DenoiserConfig,
    DistillConfig,
    EngineConfig,
    OrchestratorConfig,
    PriorConfig,
    SampleConfig,
    ServeConfig,
    TrainConfig,
    VideoCodecConfig,
)
from streamchar.timeline import Timeline

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


@dataclass
class StreamCharConfig:
    preset: str = "tiny"
    timeline: Timeline = field(default_factory=Timeline)
    video_codec: VideoCodecConfig = field(default_factory=VideoCodecConfig)
    audio_codec: AudioCodecConfig = field(default_factory=AudioCodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# -- loading ------------------------------------------------------------------------------------
def resolve_asset_path(path: str | Path) -> Path:
    """A configured file or folder: absolute as given; relative from the working directory if it exists
    there, else from the repository root (where the shipped ``checkpoints/`` live)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    shipped = REPO_ROOT / path
    return shipped if shipped.exists() else path


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``tiny``, ``base``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"Config file {path} does not exist; pass an existing YAML file or a preset name."
            )
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"Unknown preset '{name_or_path}'; use one of {names} or a path to a YAML file.")
    return preset


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first_line = str(err).splitlines()[0]
    return f"{key}: {first_line}" if key else first_line


MODEL_FILE = "model.json"


def resolve_model(name_or_path: str | Path) -> Path:
    """A shipped model by name (``tiny`` is ``checkpoints/tiny``) or a model folder holding ``model.json``."""
    path = Path(name_or_path)
    candidates = [path] if (path.is_absolute() or path.exists()) else [path, REPO_ROOT / "checkpoints" / path]
    for folder in candidates:
        if (folder / MODEL_FILE).is_file():
            return folder
    shipped = sorted(p.parent.name for p in (REPO_ROOT / "checkpoints").glob(f"*/{MODEL_FILE}"))
    raise ConfigError(
        f"No model '{name_or_path}': give a shipped name ({', '.join(shipped) or 'none shipped'}) or a folder with "
        f"{MODEL_FILE} (`streamchar recipe tiny` writes one)."
    )


def model_overrides(name_or_path: str | Path) -> tuple[str, list[str]]:
    """The preset and the ``key=value`` overrides that point every path of a config at a model folder's parts
    (video codec, orchestrator, denoiser, characters, teacher), from its ``model.json``, then the settings
    the model is played with (its ``settings``, e.g. ``engine.keep_correction``); later overrides win."""
    folder = resolve_model(name_or_path)
    try:
        record = json.loads((folder / MODEL_FILE).read_text())
        parts = dict(record["parts"])
        settings = dict(record.get("settings", {}))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{folder / MODEL_FILE} is damaged ({err}); restore it from git or rerun the recipe."
        ) from err
    overrides = []
    for key, relative in parts.items():
        target = folder / relative
        if not target.exists():
            raise ConfigError(
                f"{target} is missing from model '{name_or_path}'; restore it or rerun the recipe."
            )
        overrides.append(f"{key}={target}")
    overrides += [override_text(key, value) for key, value in settings.items()]
    return record.get("preset", "tiny"), overrides


def override_text(key: str, value) -> str:
    """A setting as the ``key=value`` override that gives it: a string bare, anything else compact JSON."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"


def load_config(
    config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> StreamCharConfig:
    """Load a preset or YAML file, apply ``key=value`` overrides and validate against the schema."""
    schema = OmegaConf.structured(StreamCharConfig)
    layers: list[DictConfig] = []
    if config is not None:
        path = resolve_config_path(str(config))
        try:
            layers.append(OmegaConf.load(path))
        except Exception as err:  # yaml errors come in several types
            raise ConfigError(f"Could not parse {path}: {err}; fix the YAML syntax.") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"Override '{item}' is not of the form key=value (for example timeline.fps=25)."
            )
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(schema, *layers)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigKeyError as err:
        raise ConfigError(
            f"Unknown config key {_describe(err)}; check the spelling against configs/tiny.yaml."
        ) from err
    except ValidationError as err:
        raise ConfigError(
            f"Wrong type for {_describe(err)}; give a value of the type configs/tiny.yaml shows."
        ) from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"Invalid config: {_describe(err)}.") from err
    except ValueError as err:  # semantic checks in dataclass __post_init__ (e.g. Timeline)
        raise ConfigError(str(err)) from err


def to_yaml(cfg: StreamCharConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def resolve_switch(value, name: str, auto: bool) -> bool:
    """An ``auto | on | off`` setting as a bool (YAML reads a bare on / off as a boolean; ``auto`` is
    ``auto``), or a one-sentence error naming the key."""
    on = {"auto": auto, "on": True, "true": True, "off": False, "false": False}.get(str(value).lower())
    if on is None:
        raise ValueError(f"{name} must be auto, on or off, got '{value}'.")
    return on
