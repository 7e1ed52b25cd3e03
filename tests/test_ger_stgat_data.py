"""GER-STGAT data: the VGAF and GECV readers on tiny fixture trees in their layouts, the feature cache (resampling,
face padding, errors that name the file and layout), the extraction script end to end on a written video, the
extractors' sizes, and the synthetic stand-in."""
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.gecv import GECVDataModule
from datamodules.group_video_features import (VGG16Features, extract_directory, face_detector, fit_video, parse_label,
                                              resnet50_features, uniform_indices)
from datamodules.standins.synthetic_group_emotion import SyntheticGroupEmotionDataModule
from datamodules.vgaf import VGAFDataModule
from lightning_modules.utils import count_parameters


def _cache(path, t=25, n=5, df=12, dh=7, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((t, n)) > 0.3
    faces = rng.normal(size=(t, n, df)).astype(np.float32) * mask[..., None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, faces=faces, face_mask=mask, frames=rng.normal(size=(t, dh)).astype(np.float32))


def _vgaf(root):
    (root / "Train").mkdir(parents=True)
    (root / "Val").mkdir()
    (root / "Train_labels.txt").write_text("Vid_name Label\n10_1.mp4 1\n10_2.mp4 2\n11_1.mp4 3\n12_4.mp4 1\n")
    (root / "Val_labels.txt").write_text("Vid_name Label\n20_1.mp4 Negative\n21_3.mp4 Neutral\n")
    for i, vid in enumerate(("10_1", "10_2", "11_1", "12_4", "20_1", "21_3")):
        (root / ("Train" if vid[0] == "1" else "Val") / f"{vid}.mp4").write_bytes(b"")
        _cache(root / "features" / f"{vid}.npz", t=25 + i, n=5 + i % 4, seed=i)


def test_vgaf_reader(tmp_path):
    _vgaf(tmp_path)
    data = VGAFDataModule(str(tmp_path), num_frames=20, max_faces=8, batch_size=2, num_workers=0)
    data.setup("fit")
    assert [v.name for v in data.splits["train"]] == ["10_1", "10_2", "11_1", "12_4"]
    assert [v.label for v in data.splits["train"]] == [0, 1, 2, 0]  # 1 Positive, 2 Neutral, 3 Negative
    assert [v.label for v in data.splits["test"]] == [2, 1] and data.splits["val"] == data.splits["test"]
    assert data.class_counts == [2, 1, 1]
    batch = next(iter(data.train_dataloader()))
    x = batch["group_video"]
    assert x["faces"].shape == (2, 20, 8, 12) and x["face_mask"].shape == (2, 20, 8) and x["frames"].shape == (2, 20, 7)
    assert x["face_mask"].dtype == torch.bool and batch["label"].dtype == torch.long


def test_vgaf_manifest_and_errors(tmp_path):
    _vgaf(tmp_path)
    (tmp_path / "Train_labels.txt").unlink()
    with pytest.raises(DatasetError, match="Train_labels.txt") as error:
        VGAFDataModule(str(tmp_path), num_workers=0).setup("fit")
    assert "Expected layout" in str(error.value) and "ger_stgat_demo.yaml" in str(error.value)
    (tmp_path / "train.csv").write_text("path,label\nTrain/10_1.mp4,Positive\nTrain/11_1.mp4,3\n")
    data = VGAFDataModule(str(tmp_path), num_workers=0)
    data.setup("fit")
    assert [(v.name, v.label) for v in data.splits["train"]] == [("10_1", 0), ("11_1", 2)]
    (tmp_path / "features" / "20_1.npz").unlink()
    with pytest.raises(DatasetError, match="feature cache missing.*20_1.npz"):
        VGAFDataModule(str(tmp_path), num_workers=0).setup("fit")
    np.savez(tmp_path / "features" / "20_1.npz", faces=np.zeros((3, 2, 4)), face_mask=np.zeros((3, 3)),
             frames=np.zeros((3, 5)))
    with pytest.raises(DatasetError, match="malformed"):
        VGAFDataModule(str(tmp_path), num_workers=0).setup("fit")
    with pytest.raises(DatasetError, match="VGAF folder not found"):
        VGAFDataModule(str(tmp_path / "absent"), num_workers=0).setup("fit")
    with pytest.raises(ValueError):
        parse_label("happy")


def test_feature_cache_resampling_and_padding():
    assert uniform_indices(40, 20).tolist() == list(range(1, 40, 2))
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    rng = np.random.default_rng(0)
    arrays = {"faces": rng.normal(size=(30, 10, 4)), "face_mask": np.ones((30, 10), bool),
              "frames": rng.normal(size=(30, 3))}
    out = fit_video(arrays, 15, 8)
    assert out["faces"].shape == (15, 8, 4) and out["face_mask"].all()
    assert torch.allclose(out["faces"][0], torch.from_numpy(arrays["faces"][1, :8]).float())  # most confident kept
    padded = fit_video(arrays, 15, 12)
    assert padded["faces"].shape == (15, 12, 4) and not padded["face_mask"][:, 10:].any()
    assert (padded["faces"][:, 10:] == 0).all()


def _gecv(root, per_class=6):
    for c, name in enumerate(("positive", "Neutral", "NEGATIVE")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            vid = f"{name.lower()}_{i}"
            (root / name / f"{vid}.mp4").write_bytes(b"")
            _cache(root / "features" / f"{vid}.npz", seed=10 * c + i)


def test_gecv_folds(tmp_path):
    _gecv(tmp_path)
    seen = []
    for fold in range(3):
        data = GECVDataModule(str(tmp_path), folds=3, fold=fold, num_workers=0)
        data.setup()
        train = {v.name for v in data.splits["train"]}
        test = [v for v in data.splits["test"]]
        assert not train & {v.name for v in test} and len(train) + len(test) == 18
        assert sorted(v.label for v in test) == [0, 0, 1, 1, 2, 2]  # stratified
        assert data.splits["val"] == data.splits["test"]
        seen += [v.name for v in test]
        batch = next(iter(data.test_dataloader()))
        assert batch["group_video"]["faces"].shape[1:3] == (15, 8)  # T = 15
    assert len(set(seen)) == 18  # the folds partition the videos
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"x/positive_{i}.mp4,1\nx/neutral_{i}.mp4,2\nx/negative_{i}.mp4,3\n" for i in range(6)))
    data = GECVDataModule(str(tmp_path), folds=3, fold=0, num_workers=0)
    data.setup()
    assert len(data.splits["train"]) == 12
    with pytest.raises(ValueError):
        GECVDataModule(str(tmp_path), folds=10, fold=10)
    (tmp_path / "labels.csv").unlink()
    import shutil
    shutil.rmtree(tmp_path / "Neutral")
    with pytest.raises(DatasetError, match="Neutral"):
        GECVDataModule(str(tmp_path), folds=3, num_workers=0).setup()


def test_extraction_writes_caches_the_reader_loads(tmp_path):
    """A written video -> extract_directory (a stub detector with known boxes and small extractors, as the real
    VGG-16/ResNet-50 are slow on CPU) -> features/<id>.npz read by the VGAF reader."""
    import cv2

    root = tmp_path / "vgaf"
    (root / "Train").mkdir(parents=True)
    writer = cv2.VideoWriter(str(root / "Train" / "a.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    calls = []

    def detect(frame):
        calls.append(frame.shape)
        return [((5, 5, 25, 30), 0.9), ((30, 10, 50, 40), 0.8), ((0, 0, 1, 1), 0.1)]  # the last one is too small

    torch.manual_seed(0)
    face_net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 6)).eval()
    frame_net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4)).eval()
    written = extract_directory(root / "Train", root / "features", num_frames=5, max_faces=8, detect=detect,
                                face_net=face_net, frame_net=frame_net)
    assert [p.name for p in written] == ["a.npz"] and len(calls) == 5 and calls[0] == (48, 64, 3)
    with np.load(written[0]) as cache:
        assert cache["faces"].shape == (5, 8, 6) and cache["frames"].shape == (5, 4)
        assert cache["face_mask"].sum(1).tolist() == [2] * 5 and not (cache["faces"][:, :2] == 0).all()
    (root / "Train_labels.txt").write_text("Vid_name Label\na.mp4 2\n")
    (root / "Val_labels.txt").write_text("Vid_name Label\na.mp4 2\n")
    data = VGAFDataModule(str(root), num_frames=5, num_workers=0)
    data.setup()
    assert data.train_set[0]["group_video"]["faces"].shape == (5, 8, 6)
    assert extract_directory(root / "Train", root / "features", detect=detect, face_net=face_net,
                             frame_net=frame_net) == []  # cached: nothing redone
    try:  # whichever detector this machine has finds no face in a blank frame; none at all is one clear error
        assert face_detector()(np.zeros((48, 64, 3), np.uint8)) == []
    except DatasetError as error:
        assert "no face detector" in str(error) and "yunet" in str(error)
    with pytest.raises(DatasetError, match="YuNet model file not found"):
        face_detector(yunet_model=str(tmp_path / "absent.onnx"))


def test_extractor_sizes():
    """torchvision's vgg16 (138,357,544) without fc8 (4,097,000) and resnet50 (25,557,032) without fc (2,049,000)."""
    with torch.device("meta"):
        assert count_parameters(VGG16Features()) == 134_260_544
    net = resnet50_features()
    assert count_parameters(net) == 23_508_032
    assert "layer4.2.conv3.weight" in net.state_dict() and "layer1.0.downsample.0.weight" in net.state_dict()


def test_standin_is_deterministic_balanced_and_has_the_signal():
    data = SyntheticGroupEmotionDataModule(train_per_class=20, val_per_class=2, test_per_class=2, num_workers=0)
    data.setup()
    again = SyntheticGroupEmotionDataModule(train_per_class=20, val_per_class=2, test_per_class=2, num_workers=0)
    again.setup()
    a, b = data.train_set[5]["group_video"], again.train_set[5]["group_video"]
    assert torch.equal(a["faces"], b["faces"]) and torch.equal(a["frames"], b["frames"])
    assert data.class_counts == [20, 20, 20]
    batch = next(iter(torch.utils.data.DataLoader(data.train_set, batch_size=60)))
    x = batch["group_video"]
    assert x["faces"].shape == (60, 20, 8, 128) and x["frames"].shape == (60, 20, 64)
    counts = x["face_mask"].sum(-1)
    assert counts.min() >= 0 and counts.max() <= 8 and x["face_mask"].float().mean() < 0.9
    # the mean face (first principal direction) orders the classes: Positive > Neutral > Negative
    m = x["face_mask"].unsqueeze(-1).float()
    mean_face = ((x["faces"] * m).sum((1, 2)) / m.sum((1, 2)))
    u = torch.linalg.svd(mean_face - mean_face.mean(0), full_matrices=False).Vh[0]
    score = mean_face @ u
    means = [score[batch["label"] == c].mean().item() for c in range(3)]
    assert means[0] > means[1] > means[2] or means[0] < means[1] < means[2]


def test_rendered_standin_goes_through_the_extraction_code():
    """The pixel path: rendered group frames, the generator's boxes on the faces, features by ``extract_video``."""
    from datamodules.standins.synthetic_group_emotion import render_group_video

    video, found = render_group_video(0, np.random.default_rng(3), frames=4, face_px=32)
    assert video.shape == (4, 64, 128, 3) and video.dtype == np.uint8 and len(found) == 4
    background = np.array([70, 80, 95])
    for (x1, y1, x2, y2), confidence in found[0]:
        assert np.abs(video[0, y1:y2, x1:x2].astype(int) - background).mean() > 20  # a face is drawn in each box
    assert [c for _, c in found[0]] == sorted((c for _, c in found[0]), reverse=True)  # confidence order
    data = SyntheticGroupEmotionDataModule(train_per_class=2, val_per_class=1, test_per_class=1, rendered=True,
                                           num_frames=4, num_workers=0)
    data.setup()
    item = data.train_set[0]["group_video"]
    assert item["faces"].shape == (4, 8, 144) and item["frames"].shape == (4, 192)
    assert item["face_mask"].any() and (item["faces"][~item["face_mask"]] == 0).all()


@pytest.mark.slow
def test_rendered_demo_learns(tmp_path):
    import json

    import run

    run.main(["--config", "experiments/ger_stgat_demo_rendered.yaml", "--run_id", "r", "--trainer.logger", "false",
              "--runs_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    result = json.loads((tmp_path / "ger_stgat_demo_rendered" / "r" / "results.json").read_text())
    assert result["test/acc"] > 0.5 and result["test/acc_prior"] == pytest.approx(1 / 3)
