"""Face anti-spoofing datasets: tiny fixture trees in each public layout (OULU-NPU, CASIA-FASD, Replay-Attack,
MSU-MFSD), the frame cache, depth maps, errors, the cross-dataset module and the synthetic stand-in."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.casia_fasd import CasiaFASDDataModule
from datamodules.face_antispoofing import ellipsoid_depth, square_crop
from datamodules.fas_cross_dataset import CrossDatasetFASDataModule
from datamodules.msu_mfsd import MSUMFSDDataModule
from datamodules.oulu_npu import OuluNPUDataModule, oulu_label
from datamodules.replay_attack import ReplayAttackDataModule, replay_attack_label

SMALL = dict(image_size=32, depth_size=4, frame_step=5, msrcr_sigmas=(2.0, 6.0, 20.0), batch_size=4, num_workers=0)


def write_video(path: Path, frames: int = 12, value: int = 100, size=(48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    rng = np.random.default_rng(value)
    for t in range(frames):
        frame = np.full((size[1], size[0], 3), value, np.uint8)
        frame[10:30, 14:34] = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        writer.write(frame)
    writer.release()


# ---------------------------------------------------------------------------------------------------- OULU
def oulu_tree(root: Path) -> Path:
    splits = {"Train": [1, 2], "Dev": [21], "Test": [36]}
    for split, users in splits.items():
        names = [f"1_1_{u:02d}_{f}" for u in users for f in (1, 2, 4)]
        for i, name in enumerate(names):
            write_video(root / f"{split}_files" / f"{name}.avi", value=40 + 10 * i)
        (root / f"{split}_files" / f"{names[0]}.txt").write_text("0, 18, 16, 30, 16\n5, 18, 17, 30, 17\n")
        for protocol, suffix in ((1, ""), (3, "_2")):
            folder = root / "Protocols" / f"Protocol_{protocol}"
            folder.mkdir(parents=True, exist_ok=True)
            signs = {"1": "+1", "2": "-1", "4": "-2"}
            (folder / f"{split}{suffix}.txt").write_text(
                "\n".join(f"{signs[n[-1]]},{n}" for n in names) + "\n")
    return root


def test_oulu_npu_reads_protocols_and_caches_frames(tmp_path):
    root = oulu_tree(tmp_path / "oulu")
    dm = OuluNPUDataModule(str(root), protocol=1, depth_fallback="ellipsoid", **SMALL)
    train = dm.list_split("train")
    assert [i.label for i in train] == [0, 1, 2, 0, 1, 2] and {i.subject for i in train} == {1, 2}
    assert train[0].relative == "Train_files/1_1_01_1"
    dm.prepare_data()
    assert (root / "cache_fas_32_step5" / "Train_files" / "1_1_01_1" / "00005.npy").is_file()
    dm.setup("fit")
    assert len(dm.train_set) == 6 * 3 and len(dm.val_set) == 3 * 3  # frames 0, 5, 10 of 12
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 6, 32, 32) and batch["target"].shape == (4, 1, 4, 4)
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    live = dm.val_set[0]
    assert live["label"] == 0 and torch.allclose(live["target"][0], torch.from_numpy(ellipsoid_depth(4, 1.2)))
    attack = dm.val_set[3]
    assert attack["label"] == 1 and attack["target"].abs().sum() == 0 and attack["group"] == 1
    dm.setup("test")
    assert len(dm.test_set) == 9
    # sub-protocols of P3 / P4
    dm3 = OuluNPUDataModule(str(root), protocol=3, sub_protocol=2, **SMALL)
    assert dm3.protocol_file("val").name == "Dev_2.txt" and len(dm3.list_split("test")) == 3
    with pytest.raises(ValueError):
        OuluNPUDataModule(str(root), protocol=4)


def test_oulu_npu_eye_positions_give_the_face_box(tmp_path):
    root = oulu_tree(tmp_path / "oulu")
    dm = OuluNPUDataModule(str(root), protocol=1, **SMALL)
    item = dm.list_split("train")[0]
    x, y, w, h = dm.face_box(item, 0, np.zeros((40, 48, 3), np.uint8))
    assert (w, h) == (24.0, 24.0) and x + w / 2 == 24.0 and y + h / 2 == pytest.approx(16 + 0.4 * 12)
    assert oulu_label("3_2_10_5") == 2 and oulu_label("1_1_01_3") == 1


def test_missing_data_and_depth_raise_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="Protocols/Protocol_1"):
        OuluNPUDataModule(str(tmp_path), protocol=1, **SMALL).prepare_data()
    root = oulu_tree(tmp_path / "oulu")
    (root / "Train_files" / "1_1_02_4.avi").unlink()
    with pytest.raises(DatasetError, match="fas_msrcr_cbam_demo.yaml"):
        OuluNPUDataModule(str(root), protocol=1, **SMALL).list_split("train")
    root = oulu_tree(tmp_path / "oulu2")
    dm = OuluNPUDataModule(str(root), protocol=1, **SMALL)  # no depth maps, no fallback
    dm.prepare_data()
    with pytest.raises(DatasetError, match="depth_fallback"):
        dm.setup("fit")


def test_precomputed_depth_maps_are_read_and_resized(tmp_path):
    root = oulu_tree(tmp_path / "oulu")
    depth_root = tmp_path / "depth"
    for split, user in (("Train", 1), ("Train", 2), ("Dev", 21)):
        for frame in (0, 5, 10):
            path = depth_root / f"{split}_files" / f"1_1_{user:02d}_1" / f"{frame:05d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.full((32, 32), frame / 10, np.float32))
    dm = OuluNPUDataModule(str(root), protocol=1, depth_root=str(depth_root), **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    assert torch.allclose(dm.val_set[1]["target"], torch.full((1, 4, 4), 0.5))


# --------------------------------------------------------------------------------------------------- CASIA
def test_casia_fasd_layout_and_subject_holdout(tmp_path):
    root = tmp_path / "casia"
    for release, subjects in (("train_release", (1, 2, 3, 4, 5)), ("test_release", (1, 2))):
        for s in subjects:
            for name in ("1", "3", "5", "HR_4"):
                write_video(root / release / str(s) / f"{name}.avi", frames=6, value=30 + s)
    dm = CasiaFASDDataModule(str(root), depth_fallback="ellipsoid", val_fraction=0.2, **SMALL)
    train, val, test = (dm.list_split(s) for s in ("train", "val", "test"))
    assert len({i.subject for i in val}) == 1 and not {i.subject for i in val} & {i.subject for i in train}
    assert len(train) + len(val) == 20 and len(test) == 8
    assert [i.label for i in test[:4]] == [0, 1, 2, 3]  # 1 live, 3 warped print, 5 cut print, HR_4 replay
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 8 * 2  # frames 0 and 5 of 6


# -------------------------------------------------------------------------------------------------- Replay
def replay_tree(root: Path) -> Path:
    for split, client in (("train", 1), ("devel", 3), ("test", 9)):
        write_video(root / split / "real" / f"client{client:03d}_session01_webcam_authenticate_controlled_1.mov")
        write_video(root / split / "attack" / "fixed" /
                    f"attack_print_client{client:03d}_session01_highdef_photo_adverse.mov", value=60)
        write_video(root / split / "attack" / "hand" /
                    f"attack_mobile_client{client:03d}_session01_mobile_video_controlled.mov", value=80)
    box = root / "face-locations" / "train" / "real" / "client001_session01_webcam_authenticate_controlled_1.face"
    box.parent.mkdir(parents=True)
    box.write_text("0 10 8 20 22\n1 0 0 0 0\n")
    return root


def test_replay_attack_layout_labels_and_face_locations(tmp_path):
    root = replay_tree(tmp_path / "replay")
    dm = ReplayAttackDataModule(str(root), depth_fallback="ellipsoid", **SMALL)
    train = dm.list_split("train")
    assert [i.label for i in train] == [0, 1, 3] and {i.subject for i in train} == {1}
    assert dm.face_box(train[0], 0, np.zeros((40, 48, 3), np.uint8)) == (10.0, 8.0, 20.0, 22.0)
    assert replay_attack_label("attack_highdef_client1_session01_highdef_photo_adverse") == 2
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_set) == 9 and {int(dm.val_set[i]["label"]) for i in range(9)} == {0, 1, 3}


# ----------------------------------------------------------------------------------------------------- MSU
def test_msu_mfsd_client_lists(tmp_path):
    root = tmp_path / "msu"
    for client in (1, 2, 3, 9):
        write_video(root / "scene01" / "real" / f"real_client{client:03d}_android_SD_scene01.mp4", frames=6)
        write_video(root / "scene01" / "attack" / f"attack_client{client:03d}_laptop_SD_printed_photo_scene01.mov",
                    frames=6)
        write_video(root / "scene01" / "attack" / f"attack_client{client:03d}_android_SD_ipad_video_scene01.mp4",
                    frames=6)
    (root / "train_sub_list.txt").write_text("001\n002\n003\n")
    (root / "test_sub_list.txt").write_text("009\n")
    dm = MSUMFSDDataModule(str(root), depth_fallback="ellipsoid", val_fraction=0.34, **SMALL)
    test = dm.list_split("test")
    assert {i.subject for i in test} == {9} and sorted(i.label for i in test) == [0, 1, 2]
    assert len(dm.list_split("train")) == 6 and len(dm.list_split("val")) == 3


# ------------------------------------------------------------------------------------------- cross-dataset
def test_cross_dataset_trains_on_sources_and_tests_on_the_target(tmp_path):
    oulu = OuluNPUDataModule(str(oulu_tree(tmp_path / "oulu")), protocol=1, depth_fallback="ellipsoid", **SMALL)
    replay = ReplayAttackDataModule(str(replay_tree(tmp_path / "replay")), depth_fallback="ellipsoid", **SMALL)
    dm = CrossDatasetFASDataModule([oulu], replay, batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 18 and len(dm.test_set) == 9
    cross = CrossDatasetFASDataModule([oulu, replay], replay, batch_size=4, num_workers=0)
    cross.setup("fit")
    groups = {int(cross.val_set[i]["group"]) for i in range(len(cross.val_set))}
    assert len(groups) == 3 + 3  # videos of the two datasets kept apart


def test_square_crop_is_centred_and_padded():
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[10:30, 20:40] = 255
    crop = square_crop(frame, (20, 10, 20, 20), 1.0, 20)
    assert crop.min() == 255
    assert square_crop(frame, (50, 30, 20, 20), 1.2, 16).shape == (16, 16, 3)  # beyond the border
    assert square_crop(frame, None, 1.2, 8).shape == (8, 8, 3)


# ------------------------------------------------------------------------------------------------ stand-in
def test_standin_renders_live_depth_and_attack_cues():
    from datamodules.standins.synthetic_antispoofing import SyntheticAntiSpoofingDataModule, render_presentations

    data = render_presentations(num_subjects=4, frames=2, size=64, depth_size=8)
    assert data["images"].shape == (32, 64, 64, 3) and np.bincount(data["labels"]).tolist() == [16, 8, 8]
    live, attack = data["labels"] == 0, data["labels"] > 0
    assert (data["depth"][attack] == 0).all() and data["depth"][live].max() > 0.8
    assert (data["depth"][live] > 0).mean() > 0.3  # the face covers a good part of the map
    dm = SyntheticAntiSpoofingDataModule(num_subjects=6, frames=2, train_subjects=3, val_subjects=2,
                                         use_msrcr=False)
    dm.setup("fit")
    subjects = lambda s: {n.split("_")[0] for n in s.names}  # noqa: E731
    assert not subjects(dm.train_set) & subjects(dm.val_set) and not subjects(dm.val_set) & subjects(dm.test_set)
    assert dm.train_set[0]["image"].shape == (3, 64, 64)
