"""CMRxRecon 2023 DataModule on a tiny release tree written in the challenge's layout (MATLAB v7.3 =
HDF5 .mat files, complex k-space as a real/imag compound), its preprocessing, cache, split and errors."""
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.cmrxrecon import CMRxReconDataModule, kspace_key, kspace_to_images, resize_images
from lightning_modules.blocks.kspace import equispaced_line_mask, fft2c

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"t": 2, "s": 2, "c": 3, "ky": 12, "kx": 16}
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jun 12 10:00:00 2023 HDF5 schema 1.00 ."


def write_mat(path: Path, key: str, kspace: np.ndarray) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: 512-byte user block with the text header, then HDF5.
    h5py's axis order is MATLAB's reversed: [t, s, (c,) ky, kx]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compound = np.empty(kspace.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
    compound["real"], compound["imag"] = kspace.real, kspace.imag
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=compound)
        f[key].attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as f:
        f.write(MATLAB_HEADER.ljust(116, b" "))


def write_cmrxrecon_tree(root: Path, cases=(1, 2, 111, 112), task="cine", accelerations=(4,), seed=0):
    """A tiny ChallengeData tree: both coil types, FullSample + AccFactor folders, P### cases.
    Case P002 has no long-axis file (the release has such cases). Returns the fully sampled k-space."""
    rng = np.random.default_rng(seed)
    task_folder, files = ("Cine", ("cine_lax.mat", "cine_sax.mat")) if task == "cine" else ("Mapping", ("T1map.mat", "T2map.mat"))
    full = {}
    for coil, coil_folder in (("single", "SingleCoil"), ("multi", "MultiCoil")):
        shape = ((SHAPE["t"], SHAPE["s"], SHAPE["c"]) if coil == "multi" else (SHAPE["t"], SHAPE["s"])) + (
            SHAPE["ky"], SHAPE["kx"])
        for case in cases:
            for name in files:
                if case == 2 and name == files[0]:
                    continue
                image = rng.random(shape) * np.exp(1j * rng.uniform(0, 0.5, shape))
                kspace = fft2c(image).astype(np.complex64)
                full[(coil, case, name)] = kspace
                base = root / "ChallengeData" / coil_folder / task_folder / "TrainingSet"
                write_mat(base / "FullSample" / f"P{case:03d}" / name, kspace_key(coil, None), kspace)
                for acceleration in accelerations:
                    mask = equispaced_line_mask(SHAPE["ky"], acceleration, center_lines=4)
                    write_mat(base / f"AccFactor{acceleration:02d}" / f"P{case:03d}" / name,
                              kspace_key(coil, acceleration), kspace * mask[:, None])
    return full


def _module(root, **kwargs):
    defaults = dict(data_dir=str(root), kspace_size=32, image_size=16, cache_dir=str(root / "cache"),
                    train_cases=(1, 110), val_cases=(111, 120), num_workers=0, batch_size=2)
    defaults.update(kwargs)
    return CMRxReconDataModule(**defaults)


def test_reads_the_release_layout_pools_coils_and_splits_by_case(tmp_path):
    write_cmrxrecon_tree(tmp_path)
    module = _module(tmp_path, val_num_slices=None)
    module.prepare_data()
    module.setup("fit")
    per_file = SHAPE["t"] * SHAPE["s"]
    # train: P001 (lax + sax) + P002 (sax only) = 3 files per coil type; val: P111, P112 = 4 files per coil type
    assert len(module.train_set) == 2 * 3 * per_file
    assert len(module.val_set) == 2 * 4 * per_file and module.test_set is module.val_set
    item = module.train_set[0]
    assert set(item) == {"image", "target"} and item["image"].shape == (1, 16, 16)
    assert item["image"].dtype == torch.float32
    train_cases = {module.entries[s]["case"] for s, _ in module.train_set.index}
    val_cases = {module.entries[s]["case"] for s, _ in module.val_set.index}
    assert train_cases == {"P001", "P002"} and val_cases == {"P111", "P112"}
    assert {e["coil"] for e in module.entries} == {"single", "multi"}


def test_preprocessing_is_kspace_padding_ifft_rss_max_normalisation_and_resize(tmp_path):
    full = write_cmrxrecon_tree(tmp_path)
    module = _module(tmp_path, val_num_slices=None, augment=False)
    module.setup("fit")
    for coil in ("single", "multi"):
        source = next(i for i, e in enumerate(module.entries)
                      if e["coil"] == coil and e["case"] == "P001" and e["file"] == "cine_sax.mat")
        kspace = full[(coil, 1, "cine_sax.mat")]
        expected = resize_images(kspace_to_images(kspace, coil == "multi", 32), 16).reshape(-1, 16, 16)
        cached = np.asarray(module.sources[source])
        assert cached.shape == (SHAPE["t"] * SHAPE["s"], 2, 16, 16)
        assert np.allclose(cached[:, 1], expected, atol=1e-6)
        # Independent check of the first (frame, slice): RSS of the coil images of the padded k-space.
        padded = np.zeros((*kspace.shape[:-2], 32, 32), np.complex64)
        padded[..., 10:22, 8:24] = kspace
        coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(padded, axes=(-2, -1)), norm="ortho"),
                                      axes=(-2, -1))
        image = np.sqrt((np.abs(coil_images) ** 2).sum(axis=-3)) if coil == "multi" else np.abs(coil_images)
        image = image[0, 0] / image[0, 0].max()
        reference = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None].float(), size=(16, 16),
                                                    mode="bilinear", align_corners=False)[0, 0].numpy()
        assert np.allclose(cached[0, 1], reference, atol=1e-5)
        assert np.isclose(image.max(), 1.0) and not np.allclose(cached[:, 0], cached[:, 1])  # input is aliased


def test_cache_is_built_once_and_reused(tmp_path):
    write_cmrxrecon_tree(tmp_path)
    module = _module(tmp_path)
    module.prepare_data()
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 2 * 7 and not list((tmp_path / "cache").rglob("*.tmp*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = _module(tmp_path)
    again.prepare_data()
    again.setup("fit")
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_validation_subset_is_the_papers_shuffle_with_seed_666(tmp_path):
    write_cmrxrecon_tree(tmp_path)
    everything = _module(tmp_path, val_num_slices=None)
    everything.setup("fit")
    subset = _module(tmp_path, val_num_slices=5)
    subset.setup("fit")
    ordered = []
    for source, entry in enumerate(everything.entries):
        if entry["case"] in ("P111", "P112"):
            ordered += [(source, p) for p in range(len(everything.sources[source]))]
    random.Random(666).shuffle(ordered)
    assert subset.val_set.index == ordered[:5]


def test_mapping_task_and_one_coil_type(tmp_path):
    write_cmrxrecon_tree(tmp_path, task="mapping", accelerations=(10,))
    module = _module(tmp_path, task="mapping", acceleration=10, coils=["multi"], val_num_slices=None)
    module.setup("fit")
    assert {e["file"] for e in module.entries} == {"T1map.mat", "T2map.mat"}
    assert {e["coil"] for e in module.entries} == {"multi"} and len(module.train_set) == 3 * SHAPE["t"] * SHAPE["s"]


def test_missing_release_raises_one_clear_error(tmp_path):
    with pytest.raises(DatasetError) as error:
        _module(tmp_path / "nowhere").setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "AccFactor04" in message
    assert "experiments/diffcmr_demo.yaml" in message


def test_missing_accfactor_file_is_named(tmp_path):
    write_cmrxrecon_tree(tmp_path)
    missing = tmp_path / "ChallengeData" / "MultiCoil" / "Cine" / "TrainingSet" / "AccFactor04" / "P111" / "cine_sax.mat"
    missing.unlink()
    with pytest.raises(DatasetError, match="Under-sampled file missing") as error:
        _module(tmp_path).setup("fit")
    assert str(missing) in str(error.value)


def test_corrupt_file_and_wrong_key_are_named(tmp_path):
    write_cmrxrecon_tree(tmp_path)
    broken = tmp_path / "ChallengeData" / "SingleCoil" / "Cine" / "TrainingSet" / "FullSample" / "P001" / "cine_sax.mat"
    broken.write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="MATLAB v7.3") as error:
        _module(tmp_path).setup("fit")
    assert str(broken) in str(error.value)
    write_mat(broken, "kspace_wrong", np.zeros((1, 1, 12, 16), np.complex64))
    with pytest.raises(DatasetError, match="kspace_single_full"):
        _module(tmp_path).setup("fit")


def test_unet_paper_config_runs_end_to_end_on_the_release_layout(tmp_path):
    import json

    import run

    write_cmrxrecon_tree(tmp_path / "data")
    run.main(["--config", str(ROOT / "experiments" / "diffcmr" / "cine.yaml"),
              "--config", str(ROOT / "experiments" / "diffcmr" / "cine" / "unet_acc04.yaml"),
              "--data.data_dir", str(tmp_path / "data"), "--data.image_size", "32", "--data.kspace_size", "32",
              "--data.num_workers", "0", "--data.batch_size", "4", "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
              "--runs_dir", str(tmp_path / "runs"), "--run_id", "cmr"])
    results = json.loads((tmp_path / "runs" / "diffcmr_cine_unet_acc04" / "cmr" / "results.json").read_text())
    assert results["paper"]["test/psnr"] == 33.11
    for key in ("test/psnr", "test/ssim", "test/nmse", "test/psnr_zero_filled"):
        assert np.isfinite(results[key])
    assert results["test/num_slices"] == 12  # 2 test batches of eval_batch_size 6


def test_missing_data_through_run_py_ends_with_one_message(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "--config", "experiments/diffcmr/cine.yaml",
                           "--config", "experiments/diffcmr/cine/unet_acc04.yaml",
                           "--data.data_dir", "/nowhere", "--runs_dir", str(tmp_path), "--trainer.logger", "false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "/nowhere" in proc.stderr and "experiments/diffcmr_demo.yaml" in proc.stderr


def test_diffcmr_paper_config_with_ema_runs_on_the_release_layout(tmp_path):
    """The Table 2 config as written (EMA callback, AdamW, T_train 100), with a narrow network and a few
    sampling steps so that it runs in seconds."""
    import json

    import run

    write_cmrxrecon_tree(tmp_path / "data")
    cli = run.main(["--config", str(ROOT / "experiments" / "diffcmr" / "cine.yaml"),
                    "--data.data_dir", str(tmp_path / "data"), "--data.image_size", "32", "--data.kspace_size", "32",
                    "--data.num_workers", "0", "--data.batch_size", "2", "--data.eval_batch_size", "2",
                    "--model.init_args.network.init_args.model_channels", "32",
                    "--model.init_args.network.init_args.rrdb_blocks", "1",
                    "--model.init_args.inference_steps", "3", "--model.init_args.rounds", "2",
                    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
                    "--trainer.logger", "false", "--runs_dir", str(tmp_path / "runs"), "--run_id", "ema"])
    assert any(type(c).__name__ == "EMAWeightAveraging" for c in cli.trainer.callbacks)
    assert type(cli.model.optimizers().optimizer).__name__ == "AdamW" and cli.model.train_steps == 100
    results = json.loads((tmp_path / "runs" / "diffcmr_cine" / "ema" / "results.json").read_text())
    assert results["paper"]["test/psnr"] == 36.10 and np.isfinite(results["test/psnr_r1"])


def test_flip_augmentation_follows_the_torch_seed():
    """The paper's random flips draw from torch's process seed (albumentations alone draws from OS entropy):
    the same seed gives the same flips, input and target flipped together."""
    from datamodules.cmrxrecon import ReconstructionPairDataset

    pairs = np.random.default_rng(0).random((1, 2, 8, 8), dtype=np.float32)
    pairs[:, 1] = pairs[:, 0] * 2  # target = 2 x input, so a joint flip keeps the ratio

    def draw(seed):  # a fresh run: a new dataset in a process seeded with ``seed``
        dataset = ReconstructionPairDataset([pairs], [(0, 0)] * 24, augment=True)
        torch.manual_seed(seed)
        return torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    first = draw(3)
    torch.testing.assert_close(first, draw(3))
    assert not torch.equal(first, draw(4))
    assert len({tuple(image.flatten()[:3].tolist()) for image in first}) > 1  # several flip states drawn
    item = ReconstructionPairDataset([pairs], [(0, 0)], augment=True)[0]
    torch.testing.assert_close(item["target"], 2 * item["image"])
