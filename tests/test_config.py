from pathlib import Path

import pytest
from omegaconf import OmegaConf

from streamchar.config import PRESET_DIR, ConfigError, StreamCharConfig, load_config, to_dict


def test_tiny_preset_equals_schema_defaults():
    assert to_dict(load_config("tiny")) == to_dict(StreamCharConfig())


def test_base_preset():
    cfg = load_config("base")
    assert cfg.video_codec.image_size == 512 and cfg.video_codec.kind == "wan"
    assert cfg.video_codec.path is None  # the tiny preset's trained codec does not leak into base
    assert cfg.video_codec.arch is None  # replaced, not merged with tiny's AutoencoderTiny kwargs
    assert cfg.timeline.temporal_factor == 4 and cfg.timeline.causal_first_frame


def test_overrides_apply_with_types():
    cfg = load_config(
        "tiny", ["timeline.chunk_latent_frames=8", "data.synth.styles=[cartoon]", "video_codec.path=x"]
    )
    assert cfg.timeline.chunk_latent_frames == 8
    assert cfg.data.synth.styles == ["cartoon"]
    assert cfg.video_codec.path == "x"


@pytest.mark.parametrize(
    "override, words",
    [("data.synth.seedx=1", "Unknown config key data.synth.seedx"), ("timeline.fps=abc", "Wrong type for timeline.fps"),
     ("timeline.fps", "not of the form key=value"), ("timeline.fps=30", "multiple of timeline.fps")],
)  # fmt: skip
def test_bad_overrides_are_one_clear_sentence(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="Unknown preset"):
        load_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("timeline: [unclosed\n")
    with pytest.raises(ConfigError, match="Could not parse"):
        load_config(bad)
    good = tmp_path / "mine.yaml"
    OmegaConf.save({"timeline": {"chunk_latent_frames": 6}}, good)
    assert load_config(good).timeline.chunk_latent_frames == 6


def test_presets_present():
    assert {p.stem for p in PRESET_DIR.glob("*.yaml")} >= {"tiny", "base"}


def test_asset_paths_resolve_from_cwd_then_repository(tmp_path: Path, monkeypatch):
    from streamchar.config import REPO_ROOT, resolve_asset_path

    monkeypatch.chdir(tmp_path)
    assert resolve_asset_path("checkpoints/tiny/vae") == REPO_ROOT / "checkpoints/tiny/vae"
    (tmp_path / "checkpoints/tiny/vae").mkdir(parents=True)  # a local folder of the same name wins
    assert resolve_asset_path("checkpoints/tiny/vae") == Path("checkpoints/tiny/vae")
    assert resolve_asset_path("nowhere/at/all") == Path("nowhere/at/all")  # left for the loader's error
    assert resolve_asset_path(tmp_path) == tmp_path
