"""TractoInferno and ISMRM 2015 readers on tiny fixtures in the distributed layouts, and their errors."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.standins.synthetic_fodf_phantom import make_phantom
from datamodules.tractoinferno import ISMRM2015DataModule, TractoInfernoDataModule
from lightning_modules.metrics.tractography import streamlines_to_mask
from lightning_modules.tasks.reinforcement import save_tractogram
from lightning_modules.tasks.tracking_env import TractographySubject

ENV = dict(step_mm=0.5, min_length_mm=5.0, max_length_mm=30.0, max_timestep=60)


def bundle_lines(centreline: np.ndarray) -> list[np.ndarray]:
    return [centreline[::10] + np.array(offset, np.float32) for offset in
            ([0, 0, 0], [0.5, 0.3, 0], [-0.4, -0.5, 0.2], [0, 0.6, -0.3])]


def write_tractoinferno(root, subjects=("1030", "1160"), with_peaks=("1030",)):
    phantom = make_phantom(size=16, radius=5.0, tube_radius=1.5, seed=1)
    affine = np.eye(4)
    for subject, split in zip(subjects, ("trainset", "testset")):
        folder = root / "derivatives" / split / f"sub-{subject}"
        (folder / "fodf").mkdir(parents=True)
        nib.save(nib.Nifti1Image(phantom["sh"], affine), folder / "fodf" / f"sub-{subject}__fodf.nii.gz")
        if subject in with_peaks:  # scilpy's layout: (X, Y, Z, 3 x P)
            nib.save(nib.Nifti1Image(phantom["peaks"].reshape(16, 16, 16, 6), affine),
                     folder / "fodf" / f"sub-{subject}__peaks.nii.gz")
        shape_ref = TractographySubject("r", phantom["sh"], phantom["peaks"], phantom["bundle_a"], phantom["bundle_a"])
        save_tractogram(bundle_lines(phantom["centreline"]), shape_ref,
                        str(folder / "tractography" / f"sub-{subject}__PYT_L.trk"))
    return phantom


def test_tractoinferno_reads_the_layout_and_rolls_out(tmp_path):
    phantom = write_tractoinferno(tmp_path)
    dm = TractoInfernoDataModule(str(tmp_path), bundle="PYT_L", train_subjects=["1030"], test_subjects=["1160"],
                                 sh_legacy=False, seeds_per_voxel=1, test_seeds_per_voxel=1, context_length=4,
                                 batch_size=4, **ENV)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.get_subject(dm.indices("train")[0])
    assert train.name == "sub-1030" and train.sh.shape == (16, 16, 16, 45) and train.peaks.shape == (16, 16, 16, 2, 3)
    expected = streamlines_to_mask(bundle_lines(phantom["centreline"]), (16, 16, 16))
    np.testing.assert_array_equal(train.bundle_mask, expected)
    assert train.tracking_mask.sum() > train.bundle_mask.sum() and (train.tracking_mask >= train.bundle_mask).all()
    assert dm.state_size == 334 and len(dm.train_set) > 0 and len(dm.val_set) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["states"].shape == (4, 4, 334) and batch["mask"].dtype == torch.bool
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert set(test) == {"subject", "seed"} and (test["subject"] == dm.indices("test")[0]).all()
    # no peaks file: dipy finds the peaks from the SH (the phantom's tangents, up to sign)
    computed = dm.get_subject(dm.indices("test")[0]).peaks
    voxel = tuple(np.argwhere(phantom["bundle_a"] & ~phantom["bundle_b"])[0])
    assert abs(np.dot(computed[voxel][0], phantom["peaks"][voxel][0])) > 0.95
    assert train.reference is None  # cleaning uses atlas bundles only, never the scored reference
    atlas = TractoInfernoDataModule(str(tmp_path), train_subjects=["1030"], test_subjects=[], sh_legacy=False,
                                    atlas_pattern="tractography/sub-{subject}__{bundle}.trk", **ENV)
    assert len(atlas.get_subject(0).reference) == 4


def test_tractoinferno_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="derivatives") as error:
        TractoInfernoDataModule(str(tmp_path), train_subjects=["1030"], test_subjects=[]).prepare_data()
    assert "tract_rlformer_demo.yaml" in str(error.value) and "sub-<id>__fodf.nii.gz" in str(error.value)
    write_tractoinferno(tmp_path)
    with pytest.raises(DatasetError, match="reference bundle AF_L"):
        TractoInfernoDataModule(str(tmp_path), bundle="AF_L", train_subjects=["1030"], test_subjects=[]).prepare_data()
    with pytest.raises(DatasetError, match="sub-9999"):
        TractoInfernoDataModule(str(tmp_path), train_subjects=["9999"], test_subjects=[]).prepare_data()
    expert = TractoInfernoDataModule(str(tmp_path), train_subjects=["1030"], test_subjects=[], sh_legacy=False,
                                     expert=str(tmp_path / "td3_{bundle}.ckpt"), **ENV)
    with pytest.raises(DatasetError, match="td3_PYT_L.ckpt"):
        expert.setup("fit")


def write_ismrm(root):
    from dipy.core.gradients import gradient_table
    from dipy.core.sphere import disperse_charges, HemiSphere
    from dipy.sims.voxel import single_tensor

    rng = np.random.default_rng(0)
    theta, phi = np.pi * rng.random(32), 2 * np.pi * rng.random(32)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 500)
    bvecs = np.concatenate([[[0, 0, 0]], hemi.vertices])
    bvals = np.concatenate([[0], np.full(32, 1000)])
    gtab = gradient_table(bvals, bvecs=bvecs)
    signal = single_tensor(gtab, 100, evals=np.array([1.7e-3, 0.3e-3, 0.3e-3]), evecs=np.eye(3))
    data = np.tile(signal, (10, 10, 10, 1)).astype(np.float32)  # one fibre population along x everywhere
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), root / "Diffusion.nii.gz")
    np.savetxt(root / "Diffusion.bvals", bvals[None], fmt="%d")
    np.savetxt(root / "Diffusion.bvecs", bvecs.T, fmt="%.6f")
    lines = [np.stack([np.linspace(1, 8, 30), np.full(30, y), np.full(30, 5.0)], 1).astype(np.float32) for y in (4, 5)]
    ref = TractographySubject("r", np.zeros((10, 10, 10, 45), np.float32), np.zeros((10, 10, 10, 1, 3), np.float32),
                              np.ones((10, 10, 10), bool), np.ones((10, 10, 10), bool), affine=affine)
    save_tractogram(lines, ref, str(root / "bundles" / "Cingulum_left.trk"))
    return lines


def test_ismrm2015_fits_csd_and_scores_its_bundle(tmp_path):
    lines = write_ismrm(tmp_path)
    dm = ISMRM2015DataModule(str(tmp_path), bundle="Cingulum_left", role="test", test_seeds_per_voxel=1,
                             step_mm=1.0, min_length_mm=4.0, max_length_mm=20.0)
    dm.prepare_data()
    dm.setup("test")
    subject = dm.get_subject(dm.indices("test")[0])
    assert subject.sh.shape == (10, 10, 10, 45) and subject.voxel_size == pytest.approx(2.0)
    np.testing.assert_array_equal(subject.bundle_mask, streamlines_to_mask(lines, (10, 10, 10)))
    peak = subject.peaks[5, 5, 5, 0]
    assert abs(peak[0]) > 0.95  # CSD finds the x-oriented fibre
    assert (tmp_path / "cache" / "csd_order8.npz").is_file()
    assert len(dm.test_set) == subject.seed_mask.sum() and dm.make_env(0).step == pytest.approx(0.5)


def test_ismrm2015_names_the_missing_dwi(tmp_path):
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "Cingulum_left.trk").write_bytes(b"")
    with pytest.raises(DatasetError, match="Diffusion.nii.gz"):
        ISMRM2015DataModule(str(tmp_path)).prepare_data()


def test_mrm_voxels_train_the_refinement_classifier(tmp_path):
    import lightning as L

    from datamodules.tractoinferno import TractoInfernoMRMDataModule
    from lightning_modules.tasks.classification import ClassificationTask
    from lightning_modules.tract_rlformer import MaskRefinementNet

    write_tractoinferno(tmp_path)
    dm = TractoInfernoMRMDataModule(str(tmp_path), bundle="PYT_L", train_subjects=["1030"], test_subjects=["1160"],
                                    roi_dilate_voxels=2, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["signal"].shape == (64, 322) and batch["label"].shape == (64,)
    labels = dm.train_set.labels.float()
    assert 0 < labels.mean() < 1  # the ROI holds bundle and non-bundle voxels
    task = ClassificationTask(MaskRefinementNet(out_features=2), num_classes=2, input_key="signal")
    L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(task, dm)


def test_hcp_reads_the_release_layout_and_fits_the_b1000_shell(tmp_path):
    from datamodules.tractoinferno import HCPDataModule

    folder = tmp_path / "930449" / "T1w" / "Diffusion"
    folder.mkdir(parents=True)
    lines = write_ismrm(tmp_path)  # a one-fibre DWI (b 0 + 32 x b 1000) and a bundle, moved to the HCP names
    (tmp_path / "Diffusion.nii.gz").rename(folder / "data.nii.gz")
    bvals = np.loadtxt(tmp_path / "Diffusion.bvals")
    np.savetxt(folder / "bvals", np.concatenate([bvals, [3000]])[None], fmt="%d")  # + a b 3000 volume, dropped
    bvecs = np.loadtxt(tmp_path / "Diffusion.bvecs")
    np.savetxt(folder / "bvecs", np.concatenate([bvecs, [[1.0], [0.0], [0.0]]], axis=1), fmt="%.6f")
    image = nib.load(folder / "data.nii.gz")
    data = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.concatenate([data, data[..., -1:] * 0.5], -1), image.affine), folder / "data.nii.gz")
    (tmp_path / "930449" / "tracts").mkdir()
    (tmp_path / "bundles" / "Cingulum_left.trk").rename(tmp_path / "930449" / "tracts" / "CG_left.trk")
    dm = HCPDataModule(str(tmp_path), bundle="CG_left", subjects=["930449"], step_mm=0.468, min_length_mm=4.0,
                       max_length_mm=20.0)
    dm.prepare_data()
    subject = dm.get_subject(0)
    np.testing.assert_array_equal(subject.bundle_mask, streamlines_to_mask(lines, (10, 10, 10)))
    assert abs(subject.peaks[5, 5, 5, 0, 0]) > 0.95 and not subject.sh[0, 0, 0].any()  # fitted in the tract mask only
    assert (tmp_path / "cache" / "930449_CG_left_csd_order8.npz").is_file()
    with pytest.raises(DatasetError, match="992774"):
        HCPDataModule(str(tmp_path), subjects=["992774"]).prepare_data()
