"""PointBL's Table 3 path: distance maps computed on whole volumes (26-connectivity) from slice-wise points,
multi-channel volumes (maps on one channel), coronal slices of a POEM-like NIfTI layout, 3D patches for a 3D network,
and short learning runs on the synthetic fat/water abdominal stand-in."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.point_labels import IGNORE, distance_map, signed_distance_maps
from datamodules.point_slices import volume_distance_maps, volume_points

CLASSES = ["background", "bld", "kdr", "lvr", "pnc", "spl", "kdl"]


def test_euclidean_3d_map_is_the_26_neighbour_chamfer_distance():
    image = np.random.default_rng(0).random((20, 18, 16)) * 255
    seeds = np.zeros(image.shape, dtype=bool)
    seeds[9, 8, 7] = True
    chamfer = distance_map(image, seeds, "euc")
    assert chamfer[10, 9, 8] == pytest.approx(np.sqrt(3)) and chamfer[10, 9, 7] == pytest.approx(np.sqrt(2))
    exact = ndimage.distance_transform_edt(~seeds)
    assert np.all(chamfer >= exact - 1e-9)  # steps 1, sqrt 2, sqrt 3 never undercut the Euclidean distance
    # and overshoot it by at most 12.8 % (the supremum of (sqrt 3 c + sqrt 2 (b - c) + a - b) / |(a, b, c)|)
    assert np.max((chamfer - exact) / np.maximum(exact, 1)) < 0.129
    maps = signed_distance_maps(image, np.where(seeds, 2, IGNORE), 3, "geo")
    assert maps[2][seeds] <= 0 and (maps[2][~seeds] > 0).all() and (maps[1] == 0).all()


def test_3d_maps_supervise_every_slice_2d_maps_only_slices_with_points():
    mask = np.zeros((16, 16, 6), dtype=np.int64)
    mask[4:10, 4:10, 1:5] = 1  # class 1 in slices 1-4 only
    mask[2:6, 11:15, :] = 2
    image = np.where(mask > 0, 200.0, 50.0) + np.random.default_rng(0).normal(0, 3, mask.shape)
    volume = {"name": "case", "image": np.stack([np.zeros_like(image), image]), "mask": mask, "spacing": (1, 1, 1)}
    points = volume_points(volume, 3, 4, 0, False)
    assert set(np.unique(points[..., 0])) == {IGNORE, 2} and set(np.unique(points[..., 2])) == {IGNORE, 1, 2}
    flat = volume_distance_maps(volume, points, 3, "euc", absent_value=1.0, dim="2d", channel=1)
    full = volume_distance_maps(volume, points, 3, "euc", dim="3d", channel=1)
    assert flat.shape == full.shape == (3, 16, 16, 6)
    assert np.all(flat[1, ..., 0] == 1.0)  # class 1 absent from slice 0: the POEM "map of ones"
    assert full[1, ..., 0].min() >= 1.0 and full[1, ..., 0].max() > 5  # a real distance to slice 1's points
    for k in (1, 2):  # signed in 3D: <= 0 on the class's points (all slices), > 0 elsewhere
        assert (full[k][points == k] <= 0).all() and (full[k][points != k] > 0).all()
    # the maps are computed on the chosen channel (channel 0 is constant: intensity distances all zero)
    intensity = volume_distance_maps(volume, points, 3, "int", dim="3d", channel=0)
    assert np.all(intensity[1:] <= 0)


def test_3d_patches_carry_points_maps_and_pad_with_ignore():
    from datamodules.point_slices import PointVolumeDataset

    rng = np.random.default_rng(0)
    mask = np.zeros((12, 10, 6), dtype=np.int64)
    mask[3:9, 3:8, 1:5] = 1
    volume = {"name": "v", "image": rng.random((2, 12, 10, 6)) * 255, "mask": mask, "spacing": (1.0, 1.0, 2.0)}
    points = volume_points(volume, 2, 4, 0, False)
    maps = volume_distance_maps(volume, points, 2, "euc", dim="3d", channel=1)
    torch.manual_seed(0)
    dataset = PointVolumeDataset([volume], [points], [maps], patch_size=(8, 8, 8), samples_per_volume=5,
                                 foreground_probability=1.0)
    assert len(dataset) == 5
    for item in dataset:
        assert item["image"].shape == (2, 8, 8, 8) and item["distance_maps"].shape == (2, 8, 8, 8)
        assert item["points"].shape == item["mask"].shape == (1, 8, 8, 8)
        assert (item["points"] == 1).any()  # centred on an annotated voxel
        assert (item["points"][..., 6:] == IGNORE).all()  # depth 6 padded to 8 with unlabelled voxels
    whole = PointVolumeDataset([volume])[0]
    assert whole["image"].shape == (2, 12, 10, 6) and "points" not in whole and whole["name"] == "v"


def _write_poem(root, cases=("s01", "s02", "s03")):
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([2.07, 2.07, 8.0, 1.0])  # RAS: LR, PA, IS
    for case in cases:
        labels = np.zeros((20, 10, 12), dtype=np.uint8)
        labels[2:8, 3:7, 1:4] = 1  # bladder, low
        labels[10:18, 2:8, 6:11] = 3  # liver, high
        water = rng.normal(100, 5, labels.shape) + 60 * (labels > 0)
        fat = rng.normal(50, 5, labels.shape) + 30 * (labels == 3)
        for c, channel in enumerate((water, fat)):
            nib.save(nib.Nifti1Image(channel.astype(np.float32), affine), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / f"{case}.nii.gz")


def test_poem_layout_coronal_slices_split_and_errors(tmp_path):
    from datamodules.base import DatasetError
    from datamodules.poem_points import POEMDataModule

    with pytest.raises(DatasetError, match="labelsTr"):
        POEMDataModule(data_dir=str(tmp_path / "missing")).prepare_data()
    _write_poem(tmp_path)
    data = POEMDataModule(data_dir=str(tmp_path), image_size=16, split_sizes=(1, 1, 1), distance="euc",
                          distance_dim="3d", batch_size=2, num_workers=0, prepare_workers=1)
    data.prepare_data()
    assert sorted(sum(data.split().values(), [])) == ["s01", "s02", "s03"]
    data.setup("fit")
    assert len(data.train_set) == 10  # one coronal slice per anterior-posterior position
    item = data.train_set[4]
    assert item["image"].shape == (2, 16, 16) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["distance_maps"].shape == (7, 16, 16)
    # coronal slice: LR along the first axis, foot-head along the second (bladder low, liver high)
    mask = item["mask"][0]
    assert set(mask.unique().tolist()) == {0, 1, 3}
    assert torch.nonzero(mask == 1)[:, 1].float().mean() < torch.nonzero(mask == 3)[:, 1].float().mean()
    assert item["spacing"].tolist() == pytest.approx([2.07 * 20 / 16, 8.0 * 12 / 16, 2.07])
    assert list((tmp_path / "pointbl_cache").rglob("euc_w4_s0_3d_ch1_absent1/*.npz"))
    (tmp_path / "imagesTr" / "s03_0001.nii.gz").write_bytes(b"not a volume")
    broken = POEMDataModule(data_dir=str(tmp_path), image_size=16, cases=[["s01"], ["s02"], ["s03"]],
                            distance="none", num_workers=0)
    with pytest.raises(DatasetError, match="s03_0001.nii.gz"):
        broken.setup("test")
    (tmp_path / "imagesTr" / "s03_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="missing file.*s03_0001.nii.gz"):
        POEMDataModule(data_dir=str(tmp_path), image_size=16, cases=[["s03"], ["s02"], ["s01"]]).prepare_data()


def _fit_and_test(task, data, tmp_path, epochs: int, check_val_every_n_epoch: int):
    import lightning as L

    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_epochs=epochs, num_sanity_val_steps=0, check_val_every_n_epoch=check_val_every_n_epoch,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Record()])
    trainer.fit(task, datamodule=data)
    return losses, trainer.test(task, datamodule=data, verbose=False)[0]


def test_enet_learns_from_points_with_3d_maps_on_the_abdomen_standin(tmp_path):
    import lightning as L

    from datamodules.standins.synthetic_abdomen import SyntheticAbdomenDataModule
    from lightning_modules.pointbl import ENet
    from lightning_modules.tasks.weak_segmentation import WeakSegmentationTask

    L.seed_everything(0)
    data = SyntheticAbdomenDataModule(num_train=3, num_val=1, num_test=1, size=32, depth=12, distance="euc",
                                      distance_dim="3d", batch_size=4, num_workers=0)
    task = WeakSegmentationTask(ENet(2, 7, base_channels=8), num_classes=7, alpha=1.0, class_names=CLASSES,
                                figure_every_n_epochs=0, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    losses, results = _fit_and_test(task, data, tmp_path, epochs=10, check_val_every_n_epoch=10)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert results["test/dice_all_background"] == 0.0 and results["test/num_volumes"] == 1.0
    assert results["test/dice_3d"] > 0.12  # all-background scores 0 (about 0.2 here, six organs at 32x32)


def test_3d_unet_trains_on_patches_and_infers_whole_volumes_by_sliding_windows(tmp_path):
    import lightning as L

    from datamodules.standins.synthetic_abdomen import SyntheticAbdomenDataModule
    from lightning_modules.tasks.weak_segmentation import WeakSegmentationTask
    from lightning_modules.unet3d import UNet3D

    L.seed_everything(0)
    data = SyntheticAbdomenDataModule(num_train=2, num_val=1, num_test=1, size=32, depth=12, distance="euc",
                                      distance_dim="3d", network_dims=3, patch_size=(16, 16, 8),
                                      samples_per_volume=6, batch_size=4, eval_batch_size=1, num_workers=0)
    task = WeakSegmentationTask(UNet3D(2, 7, (8, 16)), num_classes=7, alpha=1.0, monitor_metric="val/dice",
                                volume_metrics=False, metric_aggregation="per_image", class_names=CLASSES,
                                hd95=True, roi_size=(16, 16, 8), figure_every_n_epochs=0,
                                optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    losses, results = _fit_and_test(task, data, tmp_path, epochs=10, check_val_every_n_epoch=10)
    # patch losses are noisy (each patch sees other maps): the last ten steps against the first three (about 0.77)
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:3])
    assert results["test/num_images"] == 1.0  # one whole 32x32x12 volume, stitched from 16x16x8 windows
    assert np.isfinite(results["test/dice"]) and results["test/dice_all_background"] == 0.0


@pytest.mark.slow
def test_demo_3d_maps_beat_2d_maps_and_points_alone(tmp_path):
    """The Table 3 stand-in demo (E-Net on coronal slices, 20 epochs, geodesic maps computed in 3D) against the same
    run with maps per 2D slice and with points alone, through run.py (~15 min on 2 loaded CPU cores)."""
    import json

    import run

    scores = {}
    for name, extra in (("geo3d", []), ("geo2d", ["--data.init_args.distance_dim", "2d"]),
                        ("pce", ["--model.init_args.alpha", "0", "--data.init_args.distance", "none"])):
        run.main(["--config", "experiments/pointbl_demo_3d.yaml", "--runs_dir", str(tmp_path), "--run_id", name,
                  "--trainer.enable_progress_bar", "false", *extra])
        scores[name] = json.loads((tmp_path / "pointbl_demo_3d" / name / "results.json").read_text())
    # measured: Dice 0.662 / 0.476 / 0.189, HD95 31 / 152 / 203 mm
    assert scores["geo3d"]["test/dice_3d"] > scores["geo2d"]["test/dice_3d"] + 0.05
    assert scores["geo2d"]["test/dice_3d"] > scores["pce"]["test/dice_3d"] + 0.1
    assert scores["geo3d"]["test/hd95_3d"] < scores["geo2d"]["test/hd95_3d"] < scores["pce"]["test/hd95_3d"]


@pytest.mark.slow
def test_demo_3d_unet_boundary_loss_beats_points_alone(tmp_path):
    """The 3D-network extension demo (3D U-Net on patches, geodesic maps in 3D, 30 epochs) against points alone,
    through run.py (~25 min on 2 loaded CPU cores)."""
    import json

    import run

    scores = {}
    for name, extra in (("geo3d", []), ("pce", ["--model.init_args.alpha", "0", "--data.init_args.distance", "none"])):
        run.main(["--config", "experiments/pointbl_demo_3d_unet.yaml", "--runs_dir", str(tmp_path), "--run_id", name,
                  "--trainer.enable_progress_bar", "false", *extra])
        scores[name] = json.loads((tmp_path / "pointbl_demo_3d_unet" / name / "results.json").read_text())
    # measured: Dice per volume 0.894 vs 0.243, HD95 10.9 vs 275 mm
    assert scores["geo3d"]["test/dice_per_image"] > scores["pce"]["test/dice_per_image"] + 0.3
    assert scores["geo3d"]["test/hd95"] < scores["pce"]["test/hd95"]
