"""CutiViral data: the ImageFolder reader (aliases, 35/15 per-class splits, splits.csv, class filter), the
geometric regime's offline copies against albumentations, the generated regime's folder layout, errors naming
the file and layout, and the synthetic skin stand-in."""
import albumentations as A
import numpy as np
import pytest
from PIL import Image

from datamodules.base import DatasetError
from datamodules.cutiviral import CLASSES, GEOMETRIC, CutiViralDataModule
from datamodules.standins.synthetic_skin import SyntheticSkinDataModule, synthetic_skin_image

FOLDERS = ("Herpes Simplex", "herpes_zoster", "Molluscum Contagiosum", "non_viral")  # two aliased spellings


def write_tree(root, per_class=20, size=12, ext="png"):
    rng = np.random.default_rng(0)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)).save(root / folder / f"img{i:02d}.{ext}")
    return root


def small(root, **kwargs):
    args = dict(train_per_class=10, test_per_class=5, val_per_class=2, image_size=8, num_workers=0, batch_size=4)
    return CutiViralDataModule(str(root), **{**args, **kwargs})


def labels(dm, split):
    return [dm.items[i].label for i in dm.split_indices[split]]


def test_per_class_splits_are_disjoint_deterministic_and_follow_the_seed(tmp_path):
    root = write_tree(tmp_path / "data")
    dm = small(root)
    dm.setup("fit")
    assert len(dm.items) == 80
    for split, n in (("train", 8), ("val", 2), ("test", 5)):
        assert np.bincount(labels(dm, split), minlength=4).tolist() == [n] * 4
    sets = [set(dm.split_indices[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    again = small(root)
    again.setup("fit")
    assert again.split_indices == dm.split_indices
    other = small(root, split_seed=1)
    other.setup("fit")
    assert other.split_indices["test"] != dm.split_indices["test"]
    assert len(dm.train_set) == 32 and len(dm.val_set) == 8 and len(dm.test_set) == 20
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8)


def test_paper_split_sizes_35_15_with_5_held_out(tmp_path):
    root = write_tree(tmp_path / "data", per_class=50, size=4)
    dm = CutiViralDataModule(str(root), image_size=4, num_workers=0, preload=False)
    dm.setup("fit")
    assert np.bincount(labels(dm, "train")).tolist() == [30] * 4
    assert np.bincount(labels(dm, "val")).tolist() == [5] * 4
    assert np.bincount(labels(dm, "test")).tolist() == [15] * 4


def test_splits_csv_fixes_the_iterations(tmp_path):
    root = write_tree(tmp_path / "data", per_class=6)
    rows = ["image,split_iter,subset"]
    for folder in FOLDERS:
        for i in range(6):
            subset = "test" if i < 2 else "val" if i == 2 else "train"
            rows.append(f"{folder}/img{i:02d}.png,0,{subset}")
            rows.append(f"{folder}/img{i:02d}.png,1,{'train' if i < 2 else 'test'}")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    dm = small(root, split_seed=0)
    dm.setup("fit")
    assert sorted(dm.items[i].name for i in dm.split_indices["test"] if dm.items[i].label == 0) == ["img00", "img01"]
    assert np.bincount(labels(dm, "val")).tolist() == [1] * 4
    dm1 = small(root, split_seed=1, val_per_class=1)  # no val rows: 1 per class drawn from train
    dm1.setup("fit")
    assert np.bincount(labels(dm1, "test")).tolist() == [4] * 4
    assert np.bincount(labels(dm1, "val")).tolist() == [1] * 4 and np.bincount(labels(dm1, "train")).tolist() == [1] * 4
    (root / "splits.csv").write_text("image,split_iter,subset\nnope.png,0,train\n")
    with pytest.raises(DatasetError, match="nope.png"):
        small(root).setup("fit")


def test_geometric_copies_equal_albumentations_and_np_rot90():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = {"hflip": A.HorizontalFlip(p=1.0)(image=image)["image"],
                "vflip": A.VerticalFlip(p=1.0)(image=image)["image"],
                "rot90": np.rot90(image, 1), "rot180": np.rot90(image, 2), "rot270": np.rot90(image, 3),
                "transpose": A.Transpose(p=1.0)(image=image)["image"]}
    assert list(GEOMETRIC) == list(expected)
    for name, op in GEOMETRIC.items():
        np.testing.assert_array_equal(op(image), expected[name])
    assert len({op(image).tobytes() for op in GEOMETRIC.values()} | {image.tobytes()}) == 7


def test_geometric_regime_adds_six_copies_per_training_image_only(tmp_path):
    root = write_tree(tmp_path / "data")
    dm = small(root, regime="geometric", normalization="unit", image_size=12)
    dm.setup("fit")
    assert len(dm.train_set) == 7 * 32 and len(dm.val_set) == 8 and len(dm.test_set) == 20
    by_name = {dm.train_set.items[i].name: i for i in range(len(dm.train_set))}
    original = next(n for n in by_name if "_" not in n)
    a = dm.train_set[by_name[original]]["image"].numpy()
    b = dm.train_set[by_name[original + "_hflip"]]["image"].numpy()
    # resize(hflip(x)) == hflip(resize(x)) up to interpolation rounding
    np.testing.assert_allclose(b, a[:, :, ::-1], atol=2 / 255)


def test_generated_regime_reads_method_n_class_folders(tmp_path):
    root = write_tree(tmp_path / "data")
    generated = tmp_path / "gen"
    for name in CLASSES:
        (generated / "cae" / "3" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)).save(generated / "cae" / "3" / name / f"g{i}.png")
    dm = small(root, regime="generated", generated_dir=str(generated), generation_method="cae", n_generated=3)
    dm.setup("fit")
    assert len(dm.train_set) == 32 + 12
    assert sorted(np.bincount([item.label for item in dm.train_set.items]).tolist()) == [11] * 4
    missing = small(root, regime="generated", generated_dir=str(generated), generation_method="wgan", n_generated=3)
    with pytest.raises(DatasetError, match="wgan") as error:
        missing.setup("fit")
    assert "<generated_dir>/<method>/<N>/<class>" in str(error.value) and "wgan_generator.yaml" in str(error.value)


def test_class_filter_and_generation_predict_set(tmp_path):
    root = write_tree(tmp_path / "data")
    dm = small(root, class_index=1, val_per_class=0, generate=7)
    dm.setup("fit")
    assert set(labels(dm, "train")) == {1} and len(dm.split_indices["train"]) == 10
    assert dm.split_indices["val"] == dm.split_indices["train"]  # generators: the 35 (here 10) training images
    assert len(dm.predict_set) == 7
    item = dm.predict_set[3]
    assert item["label"] == 1 and item["name"] == "herpes_zoster_0003"
    train_names = {dm.items[i].name for i in dm.split_indices["train"]}
    assert {i.source.stem for i in dm.predict_set.items} <= train_names


def test_missing_and_corrupt_data_raise_dataset_errors(tmp_path):
    root = write_tree(tmp_path / "data", per_class=8)
    (root / "non_viral" / "img00.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="img00.png") as error:
        small(root, train_per_class=5, test_per_class=2, val_per_class=1).setup("fit")
    assert "herpes_zoster/" in str(error.value) and "cutiviral_demo.yaml" in str(error.value)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        small(tmp_path / "nowhere").setup("fit")
    for path in (root / "non_viral").iterdir():
        path.unlink()
    (root / "non_viral").rmdir()
    with pytest.raises(DatasetError, match="non_viral"):
        small(root).setup("fit")
    with pytest.raises(DatasetError, match="need at least"):
        small(write_tree(tmp_path / "few", per_class=4)).setup("fit")


def test_standin_is_deterministic_and_its_classes_differ():
    a, b = synthetic_skin_image(0, 0, 3), synthetic_skin_image(0, 0, 3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, synthetic_skin_image(0, 0, 4))
    # vesicle classes have near-white blobs; molluscum and non-viral do not (their brightest pixels are darker)
    whiteness = [np.mean([np.percentile(synthetic_skin_image(c, 0, i).min(-1), 99.5) for i in range(10)])
                 for c in range(4)]
    assert min(whiteness[0], whiteness[1]) > 200 > max(whiteness[2], whiteness[3]) - 10
    dm = SyntheticSkinDataModule(regime="geometric", num_workers=0, image_size=32)
    dm.setup("fit")
    assert len(dm.items) == 200 and len(dm.train_set) == 7 * 120 and len(dm.test_set) == 60
