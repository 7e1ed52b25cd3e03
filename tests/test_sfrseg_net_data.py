"""SFRSeg-Net data: the RA ultrasound layout (images/, masks/, split.csv), its errors, the paper's
offline augmentation (19 / 18 copies) and the synthetic joint stand-in."""
import numpy as np
import pytest
from PIL import Image

from datamodules.base import DatasetError
from datamodules.ra_usg import ROTATIONS, RAUltrasoundDataModule, offline_variants
from datamodules.standins.synthetic_msk_ultrasound import SyntheticJointUltrasoundDataModule, synthetic_joint_ultrasound


def write_ra_usg_tree(root, num_images=7, size=(60, 80), split=None, seed=0):
    """Tiny RA-USG set: RGB images (jpg and png) with a bright square where the mask is."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"case{i:02d}" for i in range(num_images)]
    for k, name in enumerate(ids):
        image = rng.integers(0, 100, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[10:30, 20 + k: 40 + k] = 255
        image[mask > 0] = 220
        Image.fromarray(image).save(root / "images" / f"{name}.{'jpg' if k % 2 else 'png'}")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    if split is not None:
        (root / "split.csv").write_text("id,split\n" + "".join(f"{i},{s}\n" for i, s in zip(ids, split)))
    return ids


def test_layout_is_read_split_and_augmented_as_the_paper(tmp_path):
    ids = write_ra_usg_tree(tmp_path, 10)
    dm = RAUltrasoundDataModule(data_dir=str(tmp_path), image_size=(32, 48), num_workers=0)
    dm.prepare_data()
    dm.setup()
    names = dm.split_names
    assert sorted(names["train"] + names["val"] + names["test"]) == ids
    assert len(names["test"]) == 2 and len(names["val"]) == 2 and len(names["train"]) == 6  # 10/49 and 4:1
    assert len(dm.train_set) == 6 * 19 and len(dm.val_set) == 2 * 19 and len(dm.test_set) == 2 * 18
    item = dm.train_set[0]
    assert item["image"].shape == (3, 32, 48) and item["mask"].shape == (1, 32, 48)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    # The bright square is the mask: the fixture's signal survives resizing.
    assert item["image"][0][item["mask"][0] > 0].mean() > 0.8
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "name"} and batch["image"].shape == (16, 3, 32, 48)
    # Deterministic given the seed; another seed splits differently.
    dm_again = RAUltrasoundDataModule(data_dir=str(tmp_path), image_size=(32, 48), num_workers=0)
    dm_again.setup()
    assert dm_again.split_names == names


def test_split_csv_fixes_the_test_set(tmp_path):
    ids = write_ra_usg_tree(tmp_path, 6, split=["train", "train", "test", "train", "train", "test"])
    dm = RAUltrasoundDataModule(data_dir=str(tmp_path), image_size=(32, 32), num_workers=0, offline_augmentation=False)
    dm.setup()
    assert dm.split_names["test"] == [ids[2], ids[5]]
    assert len(dm.train_set) + len(dm.val_set) == 4 and len(dm.test_set) == 2


@pytest.mark.parametrize("problem", ["no_masks_dir", "missing_mask", "corrupt_image", "bad_split"])
def test_bad_inputs_raise_a_dataset_error_naming_the_file(tmp_path, problem):
    write_ra_usg_tree(tmp_path, 5, split=["train"] * 4 + ["test"])
    if problem == "no_masks_dir":
        for p in (tmp_path / "masks").iterdir():
            p.unlink()
        (tmp_path / "masks").rmdir()
        expected = str(tmp_path / "masks")
    elif problem == "missing_mask":
        (tmp_path / "masks" / "case03.png").unlink()
        expected = "case03"
    elif problem == "corrupt_image":
        (tmp_path / "images" / "case02.png").write_bytes(b"not a png")
        expected = str(tmp_path / "images" / "case02.png")
    else:
        (tmp_path / "split.csv").write_text("id,split\ncase00,train\ncase01,holdout\n")
        expected = "split.csv"
    dm = RAUltrasoundDataModule(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(DatasetError) as info:
        dm.setup()
    message = str(info.value)
    assert expected in message and "images/<id>" in message


def test_missing_folder_points_to_the_standin(tmp_path):
    with pytest.raises(DatasetError, match="sfrseg_net_demo.yaml"):
        RAUltrasoundDataModule(data_dir=str(tmp_path / "nowhere")).prepare_data()


def test_offline_variants_are_the_papers_18_plus_rescaled_copy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 28:36] = 1
    variants = offline_variants(image, mask)
    assert len(variants) == 18 and len(offline_variants(image, mask, rescaled_copy=True)) == 19
    tags = [tag for tag, _, _ in variants]
    assert tags[:3] == ["orig", "hflip", "vflip"] and tags[3:16] == [f"rot{a}" for a in ROTATIONS]
    assert tags[16:] == ["zoom0.3", "zoom0.5"]
    by_tag = {tag: (im, m) for tag, im, m in variants}
    np.testing.assert_array_equal(by_tag["hflip"][0], image[:, ::-1])
    np.testing.assert_array_equal(by_tag["vflip"][1], mask[::-1])
    # A 90-degree rotation of a square image is a lossless quarter turn (either sense).
    rot = by_tag["rot90"][1]
    assert np.array_equal(rot, np.rot90(mask, 1)) or np.array_equal(rot, np.rot90(mask, -1))
    # Zooms magnify about the centre: the central mask grows by (1/0.7)^2 and 2^2.
    for tag, factor in (("zoom0.3", 1 / 0.7), ("zoom0.5", 2.0)):
        assert by_tag[tag][1].sum() == pytest.approx(mask.sum() * factor ** 2, rel=0.15)
        assert set(np.unique(by_tag[tag][1])) <= {0, 1}


def test_synthetic_joint_standin_has_a_learnable_fluid_pocket():
    rng = np.random.default_rng(3)
    image, mask = synthetic_joint_ultrasound(rng, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
    assert np.array_equal(image[..., 0], image[..., 1])
    assert 0.01 < mask.mean() < 0.2
    grey = image[..., 0].astype(float)
    assert grey[mask > 0].mean() < grey[mask == 0].mean() - 30  # anechoic: darker than the tissue around
    dm = SyntheticJointUltrasoundDataModule(num_images=10, num_workers=0, image_size=(64, 64))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6 * 19, 2 * 19, 2 * 18)
    assert dm.train_set[0]["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("mode", ["gaussian", "poisson", "s&p", "speckle"])
def test_test_noise_perturbs_only_the_test_images(mode):
    clean = SyntheticJointUltrasoundDataModule(num_images=6, num_workers=0, image_size=(32, 32))
    noisy = SyntheticJointUltrasoundDataModule(num_images=6, num_workers=0, image_size=(32, 32), test_noise=mode)
    clean.setup(), noisy.setup()
    np.testing.assert_array_equal(clean.train_set.images, noisy.train_set.images)
    difference = noisy.test_set.images.astype(float) - clean.test_set.images.astype(float)
    assert 0 < np.abs(difference).mean() < 40
    np.testing.assert_array_equal(clean.test_set.masks, noisy.test_set.masks)
    with pytest.raises(ValueError, match="test_noise"):
        SyntheticJointUltrasoundDataModule(test_noise="pink")
