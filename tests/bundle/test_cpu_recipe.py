"""bundle/configs/cpu_recipe.yaml: a pure override of train.yaml (every key it sets is one train.yaml has), and the
merged config resolves to the recipe's values."""

from __future__ import annotations


import yaml
from monai.bundle import ConfigParser

from tests.utils import CONFIGS


def test_recipe_only_overrides_train_keys():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    recipe = yaml.safe_load((CONFIGS / "cpu_recipe.yaml").read_text())
    assert recipe, "cpu_recipe.yaml is empty"
    assert sorted(set(recipe) - set(train)) == []


def test_recipe_values_win_over_train_defaults():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "cpu_recipe.yaml")])
    assert parser.get_parsed_content("roi_size") == [128, 128]
    assert parser.get_parsed_content("crop_mode") == "pixel"
    assert parser.get_parsed_content("epochs") == 160
    assert parser.get_parsed_content("epoch_crops") == 128
    assert parser.get_parsed_content("learning_rate") == 1.0e-4
    # train.yaml's derived values follow the override
    assert parser.get_parsed_content("crop_stride") == [64, 64]
