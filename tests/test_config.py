import json

import pytest

from seedx_agent.config import PRESETS, SeedXConfig, VisionConfig
from seedx_agent.errors import ConfigError, UnknownPresetError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_round_trips(name, tmp_path):
    config = SeedXConfig.from_preset(name)
    path = tmp_path / "config.json"
    config.save(path)
    assert SeedXConfig.load(path) == config
    assert json.loads(path.read_text())["name"] == name


def test_official_dimensions():
    config = SeedXConfig.from_preset("seed-x-i")
    assert (config.vision.width, config.vision.layers, config.vision.mlp_width) == (1664, 48, 8192)
    assert config.vision.num_output_tokens == 256 and config.lvlm.num_image_tokens == 64
    assert (config.llm.hidden_size, config.llm.num_layers, config.llm.vocab_size) == (5120, 40, 32330)
    assert config.lvlm.rec_loss_scale == 6.0
    assert config.detokenizer.unet["in_channels"] == 4 and config.edit_detokenizer.unet["in_channels"] == 8
    assert config.detokenizer.perceiver.cross_attention_dim == 2048
    assert config.detokenizer.latent_size == 128
    assert SeedXConfig.from_preset("seed-x-edit").variant == "seed-x-edit"


def test_miniature_weighs_the_regression_1x_real_presets_6x():
    # Deviation (README): 6.0 starved the 4-layer miniature's LM loss; the official presets keep SEED-X's 6.0.
    assert SeedXConfig.from_preset("mini").lvlm.rec_loss_scale == 1.0
    assert {SeedXConfig.from_preset(n).lvlm.rec_loss_scale for n in ("seed-x", "seed-x-i", "seed-x-edit")} == {6.0}


def test_rec_loss_scale_override_is_validated():
    mini = SeedXConfig.from_preset("mini")
    six = mini.with_rec_loss_scale(6.0)
    assert six.lvlm.rec_loss_scale == 6.0 and mini.lvlm.rec_loss_scale == 1.0  # a new config, the old unchanged
    assert six.model_copy(update={"lvlm": mini.lvlm}) == mini  # nothing else changed
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="rec_loss_scale must be a finite number >= 0"):
            mini.with_rec_loss_scale(bad)


def test_unknown_preset_names_the_choices():
    with pytest.raises(UnknownPresetError, match="seed-x-i"):
        SeedXConfig.from_preset("seed-y")


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        VisionConfig(image_size=450)
    with pytest.raises(ConfigError, match="variant"):
        SeedXConfig.from_preset("tiny-random", variant="seed-z")
    with pytest.raises(ValueError, match="extra"):
        SeedXConfig.model_validate({**SeedXConfig.from_preset("tiny-random").model_dump(), "bogus": 1})


def test_override_keeps_the_rest():
    config = SeedXConfig.from_preset("tiny-random", variant="seed-x-edit")
    assert config.variant == "seed-x-edit"
    assert config.llm == SeedXConfig.from_preset("tiny-random").llm


def test_load_reports_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SeedXConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SeedXConfig.load(tmp_path / "bad.json")
