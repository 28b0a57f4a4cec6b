"""Training recipes: the bare `prodsearch train` picks one from what it is given."""

import dataclasses
import json

from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.cli.train import pick_recipe
import pytest

from prodsearch.retrieval.recipes import (CATALOG_ONLY_INDEX, CATALOG_ONLY_MAX_PHOTOS, RECIPES, CatalogOnlyError,
                                          choose_recipe, photos_per_sku)
from prodsearch.synthetic import write_synthetic_dataset
from prodsearch.train_config import TrainConfig


def test_photos_per_sku_is_the_median():
    assert photos_per_sku(["a", "a", "a", "b", "c"]) == 1.0
    assert photos_per_sku(["a"] * 5 + ["b"] * 3) == 4.0
    assert photos_per_sku([]) == 0.0


def test_auto_refuses_one_photo_per_sku_and_trains_the_whole_network_from_two():
    """The unseen shop of issue 28 (5.6 catalog photos per SKU) gained 10 points from whole-network
    training at 224 px, and lost 9 with customer-photos (448 px, 4 stages frozen)."""
    assert CATALOG_ONLY_MAX_PHOTOS == 1
    assert choose_recipe("auto", 1, cuda=False).name == "catalog-only"
    for median in (2, 4, 5.5, 40):
        assert choose_recipe("auto", median, cuda=False).name == "whole-224-degrade"
        assert choose_recipe("auto", median, cuda=True).name == "gpu"
    assert choose_recipe("auto", 1, cuda=True).name == "catalog-only"
    assert choose_recipe("customer-photos", 1, cuda=False).name == "customer-photos"  # still there, when asked for
    assert choose_recipe("whole-224", 1, cuda=True).name == "whole-224"
    assert choose_recipe("none", 1, cuda=False) is None


def test_whole_224_is_the_plain_defaults_for_ten_epochs():
    plain, whole = TrainConfig(train="t.csv", out="o"), TrainConfig(train="t.csv", out="o",
                                                                    **RECIPES["whole-224"].settings)
    assert whole == plain and (whole.frozen_stages, whole.img_size, whole.epochs) == (0, 224, 10)
    degrade = TrainConfig(train="t.csv", out="o", **RECIPES["whole-224-degrade"].settings)
    assert degrade == dataclasses.replace(whole, augment="degrade")


def test_every_recipe_is_a_valid_config():
    for recipe in RECIPES.values():
        TrainConfig(train="t.csv", out="o", **recipe.settings)  # unknown fields would raise


def test_the_learning_rate_decays_within_the_epochs_of_the_defaults_and_of_every_recipe():
    """train --help once showed --epochs 10 beside --lr-steps 20,40,60: a decay that never came."""
    configs = [TrainConfig(train="t.csv", out="o")] + [TrainConfig(train="t.csv", out="o", **r.settings)
                                                       for r in RECIPES.values() if r.trains]
    for config in configs:
        assert config.idle_lr_steps() is None and min(config.lr_steps) < config.epochs
    idle = TrainConfig(train="t.csv", out="o", epochs=5, lr_steps=(20, 40)).idle_lr_steps()
    assert idle == ("--lr-steps 20,40 come at or after the last of the 5 epochs (--epochs 5): the learning rate would "
                    "never decay; give steps below 5 (e.g. --lr-steps 3), or --lr-steps '' for a constant rate")
    assert TrainConfig(train="t.csv", out="o", epochs=5, lr_steps=()).idle_lr_steps() is None


def test_pick_recipe_reads_the_training_set(tmp_path):
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=3, snapshots_per_sku=6, size=48)
    with pytest.raises(CatalogOnlyError, match="1 photo"):  # 1 photo per SKU
        pick_recipe("auto", str(shop.catalog_csv), "cpu")
    assert pick_recipe("auto", str(shop.queries_csv), "cpu").name == "whole-224-degrade"  # 6 per SKU
    assert pick_recipe("customer-photos", str(shop.catalog_csv), "cpu").name == "customer-photos"
    assert pick_recipe("none", str(shop.queries_csv), "cpu") is None


def test_bare_train_on_a_catalog_trains_nothing_and_says_what_to_run(tmp_path):
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=4, snapshots_per_sku=1, size=64)
    result = CliRunner().invoke(cli, ["train", str(shop.catalog_csv), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "a catalog of one photo per product" in result.output
    assert f"prodsearch index {shop.catalog_csv} --index DIR {CATALOG_ONLY_INDEX}" in result.output
    assert f"prodsearch tune {shop.catalog_csv} --val PHOTOS --index DIR" in result.output
    assert "--recipe whole-224-degrade" in result.output
    assert not (tmp_path / "run").exists()


def test_a_recipe_sets_defaults_and_given_options_win(tmp_path):
    shop = write_synthetic_dataset(tmp_path / "shop", n_skus=4, snapshots_per_sku=1, size=64)
    result = CliRunner().invoke(cli, [
        "train", str(shop.queries_csv), "--out", str(tmp_path / "run"), "--recipe", "customer-photos",
        "--img-size", "64", "--resize", "72", "--embed-dim", "16", "--epochs", "1", "--batch-size", "8",
        "--m-per-class", "2", "--device", "cpu", "--workers", "0", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recipe"] == "customer-photos"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    recipe = RECIPES["customer-photos"].settings
    assert (saved["frozen_stages"], saved["lr_steps"]) == (recipe["frozen_stages"], list(recipe["lr_steps"]))
    assert (saved["epochs"], saved["img_size"], saved["resize"]) == (1, 64, 72)  # given options win
