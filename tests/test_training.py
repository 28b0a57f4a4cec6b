"""Training on CPU in seconds: tiny generated shops, small images, few steps."""

import math
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prodsearch.catalog.listing import read_listing
from prodsearch.cli import cli
from prodsearch.errors import ModelMismatchError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.retrieval import create_embedder
from prodsearch.retrieval.checkpoint import load_checkpoint
from prodsearch.retrieval.losses import AccuracyLoss
from prodsearch.retrieval.train_data import AugmentedImages, LabelledSet, balanced_subset
from prodsearch.retrieval.training import Trainer, TrainConfig, TrainingError, learning_rate, train
from prodsearch.synthetic import write_synthetic_dataset

from conftest import product_image


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("shop"), n_skus=6, snapshots_per_sku=4, size=64)


def tiny_config(shop, out, **kw) -> TrainConfig:
    settings = dict(train=str(shop.queries_csv), val=str(shop.catalog_csv), out=str(out), embed_dim=32,
                    img_size=64, resize=72, epochs=2, batch_size=8, accumulate=2, m_per_class=2,
                    frozen_stages=5, workers=0, device="cpu")
    return TrainConfig(**{**settings, **kw})


def test_accuracy_loss_against_hand_computation():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 2, 2])
    p0 = math.exp(2) / (math.exp(2) + math.exp(1) + 1)
    p1 = 1 / 3
    p2 = math.exp(1) / (1 + math.exp(3) + math.exp(1))
    loss = AccuracyLoss()(logits, labels)
    assert loss.item() == pytest.approx(1 - (p0 + p1 + p2) / 3, abs=1e-6)
    loss.backward()
    assert logits.grad[2, 2] < 0 and logits.grad[2, 1] > 0  # raising the true class lowers the loss


def test_balanced_subset_caps_each_sku_and_keeps_all():
    labels = np.repeat(np.arange(5), [1, 3, 5, 12, 40])
    chosen = balanced_subset(labels, max_per_class=5, seed=0)
    counts = np.bincount(labels[chosen], minlength=5)
    assert counts.tolist() == [1, 3, 5, 5, 5]
    assert len(set(chosen.tolist())) == len(chosen)
    assert np.array_equal(chosen, balanced_subset(labels, 5, seed=0))
    assert not np.array_equal(chosen, balanced_subset(labels, 5, seed=1))


def test_learning_rate_steps():
    assert [learning_rate(1.0, e, (2, 4), 0.1) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_one_training_step_lowers_the_loss(shop, tmp_path):
    trainer = Trainer(tiny_config(shop, tmp_path, frozen_stages=0), progress=None)
    optimizer = trainer.optimizer(0)
    x, y = next(iter(trainer.loader(0)))
    trainer.set_train_mode()
    before = trainer.step(x, y, accuracy_only=False).total
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = trainer.step(x, y, accuracy_only=False).total
    assert after.item() < before.item()


def test_all_stages_run_and_write_checkpoints(shop, tmp_path):
    result = train(tiny_config(shop, tmp_path / "run", balanced_epochs=1, accuracy_epochs=1))
    assert [(r.stage, r.epoch) for r in result.history] == [("main", 1), ("main", 2), ("balanced", 1), ("accuracy", 1)]
    assert set(result.history[-1].parts) == {"accuracy"}
    assert all(r.val_top1 is not None for r in result.history)
    for name in ("model.pt", "last.pt", "best.pt", "config.json", "history.json"):
        assert (tmp_path / "run" / name).is_file()
    model = load_checkpoint(result.model_path)  # weights_only=True inside
    assert model["classes"] == result.classes and "optimizer" not in model
    assert "optimizer" in load_checkpoint(tmp_path / "run" / "last.pt")


def test_frozen_parts_do_not_change(shop, tmp_path):
    before = create_embedder(embed_dim=32).state_dict()
    result = train(tiny_config(shop, tmp_path / "run", epochs=1, frozen_stages=3))
    after = load_checkpoint(result.model_path)["state_dict"]
    assert torch.equal(before["backbone.blocks.2.0.conv_pw.weight"], after["backbone.blocks.2.0.conv_pw.weight"])
    assert not torch.equal(before["backbone.blocks.5.0.conv_pw.weight"], after["backbone.blocks.5.0.conv_pw.weight"])
    assert torch.equal(before["backbone.blocks.5.0.bn1.running_mean"], after["backbone.blocks.5.0.bn1.running_mean"])


def test_freeze_backbone_trains_only_the_heads(shop, tmp_path):
    before = create_embedder(embed_dim=32).state_dict()
    result = train(tiny_config(shop, tmp_path / "run", epochs=3, freeze_backbone=True))
    after = load_checkpoint(result.model_path)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("proj.") for k in changed)
    assert result.history[-1].loss < result.history[0].loss


def test_cached_views_of_customer_photos(shop, tmp_path):
    """Heads only with augmented views: each photo's features cached as itself + 2 customer-photo
    views, an epoch draws every view once, and the same seed gives the same model."""
    config = tiny_config(shop, tmp_path / "a", epochs=2, freeze_backbone=True, augment="customer", views=3,
                         hflip=False)
    trainer = Trainer(config, None)
    features = trainer.features["train"]
    assert features.shape[:2] == (len(trainer.data), 3)
    assert not torch.equal(features[:, 0], features[:, 1]) and not torch.equal(features[:, 1], features[:, 2])
    drawn = [x for x, _ in trainer.loader(0)]
    assert sum(len(x) for x in drawn) >= len(trainer.data) * 3 - config.batch_size  # all views, one epoch
    first = train(config)
    assert first.history[0].images >= len(trainer.data) * 3 - config.batch_size
    again = load_checkpoint(train(tiny_config(shop, tmp_path / "b", epochs=2, freeze_backbone=True,
                                              augment="customer", views=3, hflip=False)).model_path)
    assert all(torch.equal(v, again["state_dict"][k]) for k, v in load_checkpoint(first.model_path)["state_dict"].items())


def test_customer_augmentation_trains_the_whole_network(shop, tmp_path):
    result = train(tiny_config(shop, tmp_path / "run", epochs=1, augment="customer", hflip=False))
    assert result.history and math.isfinite(result.history[0].loss)
    with pytest.raises(TrainingError, match="--views"):
        train(tiny_config(shop, tmp_path / "views", views=2))


def test_standard_augmentation_without_flips():
    from PIL import Image

    from prodsearch.retrieval.train_data import photo_augmentation

    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in photo_augmentation(72, flip=False).transforms)
    assert any(type(t).__name__ == "RandomHorizontalFlip" for t in photo_augmentation(72).transforms)
    assert photo_augmentation(72, "customer")(Image.new("RGB", (40, 50), "white")).size == (72, 72)
    with pytest.raises(ValueError, match="unknown augmentation"):
        photo_augmentation(72, "fancy")


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_state(shop, tmp_path):
    config = tiny_config(shop, tmp_path / "straight", epochs=2, balanced_epochs=1)
    straight = load_checkpoint(train(config).model_path)["state_dict"]

    def stop_in_epoch_two(event):
        if event["epoch"] == 2:
            raise Interrupt

    config.out = str(tmp_path / "resumed")
    with pytest.raises(Interrupt):
        train(config, progress=stop_in_epoch_two)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 0
    resumed = train(TrainConfig(train="", out="", device="cpu", workers=0), resume=tmp_path / "resumed" / "last.pt")
    assert [(r.stage, r.epoch) for r in resumed.history] == [("main", 1), ("main", 2), ("balanced", 1)]
    resumed_state = load_checkpoint(resumed.model_path)["state_dict"]
    assert all(torch.equal(straight[k], resumed_state[k]) for k in straight)


def test_checkpoint_built_index_refuses_other_models(shop, tmp_path):
    model_path = train(tiny_config(shop, tmp_path / "a", epochs=1, freeze_backbone=True)).model_path
    other_path = train(tiny_config(shop, tmp_path / "b", epochs=1, freeze_backbone=True, seed=1)).model_path
    build_index(shop.catalog_csv, tmp_path / "idx", model=str(model_path), num_workers=0)
    index = ProductIndex.open(tmp_path / "idx")  # the manifest names the checkpoint
    assert index.encoder.config.source == str(model_path.resolve())
    assert index.query([shop.queries_dir / index.skus[0] / f"{index.skus[0]}_0.jpg"])[0].matches
    for other in ("tf_efficientnet_lite0", str(other_path)):
        with pytest.raises(ModelMismatchError, match="weights: index has 'checkpoint:"):
            ProductIndex.open(tmp_path / "idx", model=other)
    moved = shutil.copy(model_path, tmp_path / "moved.pt")  # same weights elsewhere: accepted
    assert ProductIndex.open(tmp_path / "idx", model=str(moved)).encoder.config.weights == index.encoder.config.weights


def test_impossible_batching_is_refused(shop, tmp_path):
    with pytest.raises(TrainingError, match="--batch-size 7 must be a multiple of --m-per-class 2"):
        train(tiny_config(shop, tmp_path, batch_size=7))


def test_train_cli(shop, tmp_path):
    result = CliRunner().invoke(cli, [
        "train", str(shop.queries_csv), "--out", str(tmp_path / "run"), "--val", str(shop.catalog_csv),
        "--freeze-backbone", "--epochs", "2", "--img-size", "64", "--resize", "72", "--embed-dim", "32",
        "--batch-size", "8", "--m-per-class", "2", "--accuracy-epochs", "1", "--device", "cpu", "--silent",
        "--recipe", "none"])
    assert result.exit_code == 0, result.output
    assert f"Trained on 6 SKUs; model written to {tmp_path / 'run' / 'model.pt'}" in result.output
    assert "accuracy epoch   1" in result.output
    result = CliRunner().invoke(cli, ["index", str(shop.catalog_csv), "--index", str(tmp_path / "idx"),
                                      "--model", str(tmp_path / "run" / "model.pt"), "--silent"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(cli, ["train", str(shop.queries_csv), "--out", str(tmp_path / "r2"),
                                   "--resume", str(tmp_path / "run" / "model.pt")])
    assert bad.exit_code == 1
    assert bad.output.strip().endswith("holds a finished model, not a run to resume: resume from last.pt")


def test_train_on_splits_made_of_symlinks(shop, tmp_path):
    """A folder of links to the photos (a split cut without copying) trains as the photos do."""
    for name, listed in (("train", shop.queries_csv), ("val", shop.catalog_csv)):
        for item in read_listing(listed).items:
            (tmp_path / name / item.sku).mkdir(parents=True, exist_ok=True)
            os.symlink(item.path, tmp_path / name / item.sku / item.path.name)
    result = CliRunner().invoke(cli, [
        "train", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--val", str(tmp_path / "val"),
        "--freeze-backbone", "--epochs", "1", "--img-size", "64", "--resize", "72", "--embed-dim", "32",
        "--batch-size", "8", "--m-per-class", "2", "--device", "cpu", "--silent", "--recipe", "none"])
    assert result.exit_code == 0, result.output
    assert f"Trained on 6 SKUs; model written to {tmp_path / 'run' / 'model.pt'}" in result.output


def test_an_unreadable_training_photo_is_replaced_by_a_photo_of_its_sku(tmp_path):
    """Batches keep their size (the processes of a distributed run exchange equal shares)."""
    from torchvision import transforms

    (tmp_path / "bad.jpg").write_bytes(b"not a JPEG")
    for name, seed in (("good.jpg", 1), ("other.jpg", 2)):
        product_image(seed, size=32).save(tmp_path / name)
    data = LabelledSet([str(tmp_path / n) for n in ("bad.jpg", "good.jpg", "other.jpg", "bad.jpg")],
                       np.array([0, 0, 1, 2]), ["a", "b", "c"])
    images = AugmentedImages(data, transforms.ToTensor(), 32)
    x, y = images[(0, 7)]
    assert y == 0 and torch.equal(x, images[(1, 7)][0])
    with pytest.raises(TrainingError, match="no photo of SKU c can be read"):
        images[(3, 7)]
