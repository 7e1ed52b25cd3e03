"""Engagement landmark data: EngageNet and Online SE fixture trees in their layouts, the clip transforms (padding,
frame stride, x/y only), errors naming the file and the stand-in, the MediaPipe extraction path (index map, a
clear error without mediapipe) and the synthetic stand-in."""
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.engagenet import EngageNetDataModule, parse_label
from datamodules.face_landmarks import (MEDIAPIPE_INDICES, MEDIAPIPE_TO_DLIB68, LandmarkClip, extract_clip,
                                        extract_directory, fit_length, main, mean_face, mediapipe_landmarker,
                                        select_landmarks)
from datamodules.online_se import OnlineSEDataModule
from datamodules.standins.synthetic_engagement import SyntheticEngagementDataModule


def _clip(rng, frames):
    return rng.random((frames, 78, 3)).astype(np.float32)


def write_engagenet(root, rng):
    """final_labels.csv (with an SNP clip and a '.mp4' suffix), train/valid/test lists, landmarks/<clip>.npy."""
    labels = {"s01-c1": "Not-Engaged", "s01-c2": "Barely-engaged", "s02-c1": "Engaged", "s02-c2": "Highly-Engaged",
              "s03-c1": "SNP(Subject Not Present)", "s04-c1": "Highly-Engaged", "s04-c2": "Not-Engaged"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "final_labels.csv").write_text("chunk,label\n" + "".join(f"{k}.mp4,{v}\n" for k, v in labels.items()))
    (root / "train.txt").write_text("s01-c1\ns01-c2\ns02-c1\ns02-c2\ns03-c1\n")
    (root / "valid.txt").write_text("s04-c1.mp4\ns04-c2\n")
    (root / "test.txt").write_text("")
    (root / "landmarks").mkdir(exist_ok=True)
    arrays = {}
    for i, clip in enumerate(labels):
        arrays[clip] = _clip(rng, 300 if i % 2 == 0 else 280)  # one short clip: padded with absent frames
        np.save(root / "landmarks" / f"{clip}.npy", arrays[clip])
    return arrays


def test_engagenet_layout_split_and_items(tmp_path):
    arrays = write_engagenet(tmp_path / "EngageNet", np.random.default_rng(0))
    dm = EngageNetDataModule(data_dir=str(tmp_path / "EngageNet"), batch_size=2, num_workers=0)
    dm.setup("fit")
    assert [c.name for c in dm.splits["train"]] == ["s01-c1", "s01-c2", "s02-c1", "s02-c2"]  # SNP excluded
    assert [c.label for c in dm.splits["train"]] == [0, 1, 2, 3]
    assert [c.name for c in dm.splits["test"]] == ["s04-c1", "s04-c2"] and dm.val_set is not None
    assert dm.class_counts == [1, 1, 1, 1]
    item = dm.train_set[1]  # s01-c2: 280 frames, zero-padded to 300
    assert item["signal"].shape == (3, 300, 78) and item["label"].item() == 1
    assert torch.equal(item["signal"][:, :280], torch.from_numpy(arrays["s01-c2"]).permute(2, 0, 1))
    assert torch.all(item["signal"][:, 280:] == 0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["signal"].shape == (2, 3, 300, 78) and batch["label"].dtype == torch.long
    strided = EngageNetDataModule(data_dir=str(tmp_path / "EngageNet"), frame_stride=4, use_z=False, num_workers=0)
    strided.setup("fit")
    x = strided.train_set[0]["signal"]
    assert x.shape == (2, 75, 78)
    assert torch.equal(x, torch.from_numpy(arrays["s01-c1"][::4, :, :2]).permute(2, 0, 1))
    short = np.ones((3, 78, 3), np.float32)
    assert fit_length(short, 5)[3:].sum() == 0 and fit_length(short, 2).shape == (2, 78, 3) and fit_length(short, None) is short
    assert parse_label("barely-engaged") == 1 and parse_label("3") == 3 and parse_label("SNP(Subject Not Present)") is None
    with pytest.raises(ValueError):
        parse_label("bored")


@pytest.mark.parametrize("breakage, message", [
    ("no_labels", "label file missing"), ("no_list", "split list valid.txt missing"),
    ("no_clip", "landmark clip missing"), ("bad_shape", r"expected \(T, 78, 3\)"), ("unlabelled", "has no label"),
    ("bad_label", "bad row"), ("corrupt", "cannot read")])
def test_engagenet_errors_name_the_file_and_the_standin(tmp_path, breakage, message):
    root = tmp_path / "EngageNet"
    write_engagenet(root, np.random.default_rng(0))
    if breakage == "no_labels":
        (root / "final_labels.csv").unlink()
    elif breakage == "no_list":
        (root / "valid.txt").unlink()
    elif breakage == "no_clip":
        (root / "landmarks" / "s02-c1.npy").unlink()
    elif breakage == "bad_shape":
        np.save(root / "landmarks" / "s02-c1.npy", np.zeros((10, 68, 2), np.float32))
    elif breakage == "unlabelled":
        (root / "train.txt").write_text("s01-c1\nnot-a-clip\n")
    elif breakage == "bad_label":
        (root / "final_labels.csv").write_text("chunk,label\ns01-c1,Sleepy\n")
    elif breakage == "corrupt":
        (root / "landmarks" / "s02-c1.npy").write_bytes(b"not an npy file")
    with pytest.raises(DatasetError, match=message) as error:
        EngageNetDataModule(data_dir=str(root), num_workers=0).setup("fit")
    assert "experiments/engagement_stgcn_demo.yaml" in str(error.value) and "final_labels.csv" in str(error.value)
    with pytest.raises(DatasetError, match="folder not found"):
        EngageNetDataModule(data_dir=str(tmp_path / "nowhere"), num_workers=0).setup("fit")


def test_online_se_layout(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "OnlineSE"
    (root / "landmarks").mkdir(parents=True)
    for split, rows in {"train": [("a1", "Engaged"), ("a2", "Not-Engaged")], "validation": [("b1", "1")],
                        "test": [("c1.mp4", "Not-Engaged"), ("c2", "0")]}.items():
        (root / f"{split}.csv").write_text("clip,label\n" + "".join(f"{c},{l}\n" for c, l in rows))
        for clip, _ in rows:
            np.save(root / "landmarks" / f"{clip.removesuffix('.mp4')}.npy", _clip(rng, 250))
    dm = OnlineSEDataModule(data_dir=str(root), num_workers=0)
    dm.setup("fit")
    assert [c.label for c in dm.splits["train"]] == [1, 0] and [c.name for c in dm.splits["test"]] == ["c1", "c2"]
    assert dm.train_set[0]["signal"].shape == (3, 240, 78)  # cropped to 10 s at 24 fps
    (root / "test.csv").write_text("clip,label\nc1,maybe\n")
    with pytest.raises(DatasetError, match="unknown label") as error:
        OnlineSEDataModule(data_dir=str(root), num_workers=0).setup("fit")
    assert "test.csv" in str(error.value) and "engagement_stgcn_demo_binary.yaml" in str(error.value)


def test_mediapipe_index_map_and_extraction(tmp_path):
    assert len(MEDIAPIPE_TO_DLIB68) == 68 and len(set(MEDIAPIPE_INDICES)) == 78
    assert MEDIAPIPE_INDICES[68:] == tuple(range(468, 478)) and max(MEDIAPIPE_TO_DLIB68) < 468
    points = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    kept = select_landmarks(points)
    assert kept.shape == (78, 3) and kept[8, 0] == 152 * 3 and kept[30, 0] == 4 * 3  # chin, nose tip
    with pytest.raises(ValueError, match="478"):
        select_landmarks(points[:468])
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    calls = iter([points, None, points])
    clip = extract_clip(frames, lambda frame: next(calls))
    assert clip.shape == (3, 78, 3) and np.all(clip[1] == 0) and np.array_equal(clip[0], kept)
    # a real video file through OpenCV, with a stand-in detector
    import cv2

    video = tmp_path / "videos" / "clip1.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for _ in range(5):
        writer.write(np.full((32, 32, 3), 128, np.uint8))
    writer.release()
    written = extract_directory(tmp_path / "videos", tmp_path / "landmarks", detect=lambda frame: points)
    assert written == [tmp_path / "landmarks" / "clip1.npy"] and np.load(written[0]).shape == (5, 78, 3)
    assert mean_face([LandmarkClip(written[0], 0, "clip1")]).shape == (78, 3)


def test_extraction_without_mediapipe_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("No module named 'mediapipe'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    with pytest.raises(RuntimeError, match="pip install 'mediapipe"):
        mediapipe_landmarker()
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"")
    assert main(["extract", "--videos", str(tmp_path / "v"), "--out", str(tmp_path / "out")]) == 1
    assert "needs MediaPipe" in capsys.readouterr().err


def test_standin_clips():
    dm = SyntheticEngagementDataModule(train_per_class=3, val_per_class=2, test_per_class=2, frames=16, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and dm.class_counts == [3, 3, 3, 3] and dm.num_classes == 4
    assert dm.train_set[0]["signal"].shape == (3, 16, 78)
    binary = SyntheticEngagementDataModule(train_per_class=2, val_per_class=1, test_per_class=1, frames=8,
                                           binary=True, num_workers=0)
    binary.setup("fit")
    assert binary.class_counts == [4, 4] and binary.classes == ("Not-Engaged", "Engaged")
    # the splits are different clips
    assert not torch.equal(dm.train_set[0]["signal"], dm.test_set[0]["signal"])


def test_engagenet_paper_configs_run_both_stages_on_the_fixture(tmp_path):
    """engagenet.yaml (one epoch, narrow widths) writes its final epoch as final.ckpt/last.ckpt; engagenet_ordinal.yaml
    loads that trunk through the CLI and tests Eq. 2's predictions on valid.txt."""
    import json

    import run

    write_engagenet(tmp_path / "EngageNet", np.random.default_rng(0))
    common = ["--data.init_args.data_dir", str(tmp_path / "EngageNet"), "--data.init_args.num_frames", "24",
              "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", "--trainer.max_epochs", "1",
              "--trainer.logger", "false", "--runs_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    run.main(["--config", "experiments/engagement_stgcn/engagenet.yaml", "--run_id", "a",
              "--model.init_args.network.init_args.channels", "[4, 4, 8]", *common])
    stage1 = tmp_path / "runs" / "engagement_stgcn_engagenet" / "a"
    assert (stage1 / "checkpoints" / "final.ckpt").is_file() and (stage1 / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((stage1 / "results.json").read_text())["test/acc_prior"] == pytest.approx(0.5)
    run.main(["--config", "experiments/engagement_stgcn/engagenet_ordinal.yaml", "--run_id", "b",
              "--model.init_args.network.init_args.trunk_checkpoint", str(stage1 / "checkpoints" / "last.ckpt"),
              *common])
    result = json.loads((tmp_path / "runs" / "engagement_stgcn_engagenet_ordinal" / "b" / "results.json").read_text())
    assert 0.0 <= result["test/acc"] <= 1.0 and result["paper"]["test/acc"] == 0.7124


def test_hand_landmarks_are_appended_as_nodes(tmp_path):
    """Table 3's last row: hands/<clip>.npy (T, 21, 3) appended as nodes 78-98, fitted to the clip's length;
    a missing hand file is a DatasetError; the network's graph is the face's Delaunay + the hand skeleton."""
    from datamodules.face_landmarks import HAND_CONNECTIONS
    from lightning_modules.engagement_stgcn import EngagementSTGCN, landmark_adjacency

    root = tmp_path / "EngageNet"
    arrays = write_engagenet(root, np.random.default_rng(0))
    (root / "hands").mkdir()
    rng = np.random.default_rng(3)
    hands = {clip: rng.random((250, 21, 3)).astype(np.float32) for clip in arrays}
    for clip, array in hands.items():
        np.save(root / "hands" / f"{clip}.npy", array)
    dm = EngageNetDataModule(data_dir=str(root), hands=True, num_workers=0)
    dm.setup("fit")
    x = dm.train_set[0]["signal"]  # s01-c1: 300 face frames, 250 hand frames padded with zeros
    assert x.shape == (3, 300, 99)
    assert torch.equal(x[:, :250, 78:], torch.from_numpy(hands["s01-c1"]).permute(2, 0, 1))
    assert torch.all(x[:, 250:, 78:] == 0) and torch.equal(x[:, :, :78], torch.from_numpy(arrays["s01-c1"]).permute(2, 0, 1))
    net = EngagementSTGCN(4, channels=(4,), residual=(False,), hand_landmarks=True)
    assert net(x[None]).shape == (1, 4)
    a = landmark_adjacency(78, hand_landmarks=True)
    assert a.shape == (99, 99) and np.array_equal(a, a.T) and a[78:, 78:].sum() == 2 * len(HAND_CONNECTIONS)
    assert a[:78, 78:].sum() == 0 and np.array_equal(a[:78, :78], landmark_adjacency(78))
    (root / "hands" / "s02-c1.npy").unlink()
    with pytest.raises(DatasetError, match="landmark clip missing"):
        EngageNetDataModule(data_dir=str(root), hands=True, num_workers=0).setup("fit")
    hand_points = np.ones((21, 3), np.float32)
    clip = extract_clip([np.zeros((4, 4, 3), np.uint8)] * 2, lambda frame: hand_points, hands=True)
    assert clip.shape == (2, 21, 3)
