"""DST micro-expression data: preprocessing (apex window, magnification, long-term flow, augmentation geometry),
the CASME II / SAMM / SMIC-HS layouts and coding sheets, the MEGC 2019 composite mapping, LOSO splits, the stand-in."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.micro_expression import (CASME2DataModule, MEGC2019CompositeDataModule, SAMMDataModule,
                                          SMICDataModule, affine_clip, apex_window, encode_flow, list_casme2,
                                          list_samm, list_smic, magnify, optical_flow, prepare_clip, read_sheet)
from datamodules.standins.synthetic_micro_expression import SyntheticMicroExpressionDataModule


def texture(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0)


def test_apex_window_repeats_edge_frames():
    assert apex_window(40, 20).tolist() == list(range(12, 29))
    assert apex_window(10, 1).tolist() == [0] * 7 + list(range(0, 10))
    assert apex_window(5, 4, 5).tolist() == [2, 3, 4, 4, 4]


def test_magnify_is_linear_eulerian():
    frames = np.array([[[[100]]], [[[110]]], [[[90]]]], np.uint8)  # (T=3, 1, 1, 1)
    out = magnify(frames, 4.0)
    assert out[:, 0, 0, 0].tolist() == [100, 150, 50]  # I_t + 4 (I_t - I_1)
    assert magnify(np.array([[[[10]]], [[[250]]]], np.uint8), 4.0)[1, 0, 0, 0] == 255  # clipped


def test_farneback_flow_recovers_a_shift():
    image = texture()
    moved = np.roll(image, (1, 2), axis=(0, 1))  # content moves +2 px in x, +1 px in y
    flow = optical_flow(image.astype(np.uint8), moved.astype(np.uint8))
    centre = flow[16:48, 16:48].reshape(-1, 2)
    assert np.allclose(np.median(centre, 0), [2.0, 1.0], atol=0.25)
    encoded = encode_flow(np.stack([np.zeros_like(flow), flow]))
    assert encoded.dtype == np.uint8 and encoded.shape == (2, 64, 64, 3)
    assert (encoded[0, ..., :2] == 128).all() and encoded[1, ..., 2].max() == 255  # per-clip max magnitude


def test_prepare_clip_shapes_and_channels():
    frames = np.stack([np.repeat(np.roll(texture(48), t // 4, axis=1)[..., None], 3, -1) for t in range(30)])
    clip = prepare_clip(frames.astype(np.uint8), apex=15, num_frames=17, image_size=32, alpha=4.0)
    assert clip.shape == (17, 6, 32, 32) and clip.dtype == np.uint8
    assert (clip[0, 3:5] == 128).all() and (clip[0, 5] == 0).all()  # flow of the first frame to itself
    assert clip[-1, 3, 8:24, 8:24].astype(float).mean() > 140  # later frames moved right: u > 0


def test_affine_clip_moves_flow_vectors_with_the_image():
    """A blob displaced by w between two frames, with w written in the flow channels: after a flip + rotation the
    flow channels point where the blob moved."""
    size = 48
    video = torch.full((2, 6, size, size), -1.0)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for t, (x, y) in enumerate([(20.0, 22.0), (26.0, 22.0)]):  # w = (6, 0) px
        video[t, :3] = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0) * 2 - 1
    video[:, 3], video[:, 4] = 0.6, 0.0  # u, v: w / m
    for flip, angle in [(True, 0.0), (False, 90.0), (True, 30.0), (False, -20.0)]:
        out = affine_clip(video, flip, angle)
        mass = out[:, 0] + 1
        centroid = torch.stack([(mass * xx).sum((1, 2)), (mass * yy).sum((1, 2))], 1) / mass.sum((1, 2))[:, None]
        moved = centroid[1] - centroid[0]
        vector = torch.stack([out[0, 3, 24, 24], out[0, 4, 24, 24]])
        cosine = torch.dot(moved, vector) / (moved.norm() * vector.norm())
        assert cosine > 0.98, (flip, angle, moved, vector)
        assert torch.isclose(vector.norm(), torch.tensor(0.6), atol=1e-4)


# ---------------------------------------------------------------------------------------------------- layouts
def write_frames(folder, numbers, pattern, size=24, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in numbers:
        cv2.imwrite(str(folder / pattern.format(n)), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def write_xlsx(path, rows):
    openpyxl = pytest.importorskip("openpyxl")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    workbook.save(path)


CASME2_HEADER = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]


@pytest.fixture
def casme2(tmp_path):
    root = tmp_path / "CASME2"
    rows = [CASME2_HEADER,
            ["01", "EP02_01f", 46, 59, 86, "12", "happiness"],
            ["01", "EP03_02", 40, 50, 60, "4", "disgust"],
            [2, "EP01_11f", 10, "/", 20, "1+2", "surprise"],  # an unknown apex: the middle frame
            [2, "EP06_01f", 1, 5, 9, "14", "fear"],  # dropped (5 classes)
            [2, "EP08_04", 1, 3, 9, "14", "others"]]
    write_xlsx(root.parent / "tmp.xlsx", rows)  # importorskip first
    root.mkdir()
    (root.parent / "tmp.xlsx").rename(root / "CASME2-coding-20140508.xlsx")
    for subject, name, onset, _, offset, *_ in rows[1:]:
        write_frames(root / "Cropped" / f"sub{int(subject):02d}" / name, range(onset - 3, offset + 3), "reg_img{}.jpg")
    return root


def test_casme2_layout(casme2):
    clips = list_casme2(casme2)
    assert [c.name for c in clips] == ["sub01/EP02_01f", "sub01/EP03_02", "sub02/EP01_11f", "sub02/EP06_01f",
                                       "sub02/EP08_04"]
    first = clips[0]
    assert len(first.frames) == 86 - 46 + 1 and first.frames[first.apex].name == "reg_img59.jpg"
    assert clips[2].apex == len(clips[2].frames) // 2
    five = CASME2DataModule(casme2).list_clips()
    assert [(c.emotion, c.label) for c in five] == [("happiness", 0), ("disgust", 2), ("surprise", 1), ("others", 4)]
    megc = CASME2DataModule(casme2, labels="megc2019").list_clips()
    assert [(c.emotion, c.label) for c in megc] == [("happiness", 1), ("disgust", 0), ("surprise", 2)]


def test_casme2_errors_name_the_layout(tmp_path, casme2):
    with pytest.raises(DatasetError, match="coding sheet") as error:
        list_casme2(tmp_path)
    assert "Cropped/sub01/EP02_01f" in str(error.value) and "dst_mer_demo.yaml" in str(error.value)
    import shutil

    shutil.rmtree(casme2 / "Cropped" / "sub02" / "EP08_04")
    with pytest.raises(DatasetError, match="EP08_04"):
        list_casme2(casme2)
    with pytest.raises(DatasetError, match="not found"):
        list_casme2(tmp_path / "nowhere")


def test_samm_layout_with_title_rows(tmp_path):
    root = tmp_path / "SAMM_root"
    root.mkdir()
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
              "Type", "Action Units", "Notes", "Estimated Emotion"]
    rows = [["SAMM micro-movement FACS codes"], [], header,
            [6, "006_1_2", 1, 5562, 5588, 5632, 71, "Micro - 1/2", "R4+R7", "", "Anger"],
            [7, "007_3_1", 3, 100, 110, 120, 21, "Micro - 1/2", "12", "", "Other"],
            [7, "007_5_1", 5, 200, 204, 216, 17, "Micro - 1/2", "14", "", "Contempt"]]
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)
    for subject, name, _, onset, _, offset, *_ in rows[3:]:
        write_frames(root / "SAMM" / f"{subject:03d}" / name, range(onset - 2, offset + 2),
                     f"{subject:03d}_" + "{:05d}.jpg")
    clips = list_samm(root)
    assert [c.subject for c in clips] == ["006", "007", "007"]
    assert clips[0].frames[clips[0].apex].name == "006_05588.jpg" and len(clips[0].frames) == 5632 - 5562 + 1
    eight = SAMMDataModule(root).list_clips()
    assert [(c.emotion, c.label) for c in eight] == [("anger", 3), ("others", 7), ("contempt", 0)]
    megc = SAMMDataModule(root, labels="megc2019").list_clips()
    assert [(c.emotion, c.label) for c in megc] == [("anger", 0), ("contempt", 0)]
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "SAMM_Micro_FACS_Codes_v2.csv").write_text("title\n\n" + ",".join(header) + "\n")
    assert read_sheet(csv_root / "SAMM_Micro_FACS_Codes_v2.csv") == []


@pytest.fixture
def smic(tmp_path):
    root = tmp_path / "SMIC"
    for subject, clips in {"s1": [("positive", "s1_po_01"), ("negative", "s1_ne_01")],
                           "s2": [("surprise", "s2_sur_01"), ("negative", "s2_ne_03")],
                           "s3": [("positive", "s3_po_02")]}.items():
        for emotion, name in clips:
            write_frames(root / "HS" / subject / "micro" / emotion / name, range(1, 12), "image{:06d}.bmp", size=32)
    return root


def test_smic_layout(smic):
    clips = list_smic(smic)
    assert [(c.subject, c.emotion) for c in clips] == [("s1", "positive"), ("s1", "negative"), ("s2", "negative"),
                                                       ("s2", "surprise"), ("s3", "positive")]
    assert all(c.apex == 5 and len(c.frames) == 11 for c in clips)
    assert len(list_smic(smic / "HS")) == 5  # data_dir may be HS/ itself
    with pytest.raises(DatasetError, match="s\\*/micro"):
        list_smic(smic / "HS" / "s1")


def test_smic_datamodule_loso_and_cache(smic, tmp_path):
    dm = SMICDataModule(smic, image_size=16, num_frames=5, fold=1, cache_dir=tmp_path / "cache", batch_size=2)
    dm.prepare_data()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5
    dm.setup("fit")
    assert dm.subjects == ["s1", "s2", "s3"] and dm.held_out == "s2"
    assert sorted(dm.test_set.names) == ["s2/s2_ne_03", "s2/s2_sur_01"] and len(dm.train_set) == 3
    assert not set(dm.train_set.names) & set(dm.test_set.names)
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 5, 6, 16, 16) and batch["video"].abs().max() <= 1.0
    assert batch["label"].dtype == torch.int64 and batch["group"].tolist()[0] in (0, 2)
    with pytest.raises(ValueError, match="fold must be in \\[0, 3\\)"):
        SMICDataModule(smic, image_size=16, num_frames=5, fold=3, cache_dir=tmp_path / "cache").setup("fit")


def test_megc2019_composite(casme2, smic, tmp_path):
    samm = tmp_path / "SAMM"
    samm.mkdir()
    write_xlsx(samm / "SAMM_Micro_FACS_Codes_v2.xlsx",
               [["Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion"],
                [11, "011_2_3", 30, 35, 40, "Happiness"], [11, "011_2_5", 50, 52, 60, "Other"]])
    write_frames(samm / "011" / "011_2_3", range(28, 43), "011_{:05d}.jpg")
    write_frames(samm / "011" / "011_2_5", range(48, 63), "011_{:05d}.jpg")
    dm = MEGC2019CompositeDataModule(casme2, samm, smic, image_size=16, num_frames=5, cache_dir=tmp_path / "c",
                                     samm_face_crop=True)
    clips = dm.list_clips()
    assert dm.classes == ("negative", "positive", "surprise")
    assert [(c.subject, c.emotion, c.label) for c in clips] == [
        ("casme2/sub01", "happiness", 1), ("casme2/sub01", "disgust", 0), ("casme2/sub02", "surprise", 2),
        ("samm/011", "happiness", 1), ("smic/s1", "positive", 1), ("smic/s1", "negative", 0),
        ("smic/s2", "negative", 0), ("smic/s2", "surprise", 2), ("smic/s3", "positive", 1)]
    dm.setup("fit")
    assert len(dm.subjects) == 6 and dm.held_out == "casme2/sub01" and len(dm.test_set) == 2


def test_standin_motion_is_the_only_signal():
    """The stand-in's first frames do not tell the classes apart; the flow at the apex does (brows vs mouth)."""
    dm = SyntheticMicroExpressionDataModule(num_subjects=2, clips_per_class=2, size=48, num_frames=9, augment=False)
    dm.setup("fit")
    clips = np.concatenate([dm.train_set.clips, dm.test_set.clips]).astype(np.float32)
    labels = np.concatenate([dm.train_set.labels.numpy(), dm.test_set.labels.numpy()])
    assert clips.shape == (12, 9, 6, 48, 48)
    v_brows = clips[:, 4, 4, 10:22].mean((1, 2)) - 128  # v at the apex over the brows (y down)
    assert (v_brows[labels == 1] > 5).all() and (v_brows[labels == 2] < -5).all()  # lowered / raised
    assert np.abs(v_brows[labels == 0]).mean() < 0.5 * np.abs(v_brows[labels != 0]).mean()  # a smile: the mouth


def test_face_box_finds_the_face():
    from datamodules.micro_expression import detect_face_box
    from datamodules.standins.synthetic_faces import FaceParams, render_faces

    image, _ = render_faces(FaceParams.neutral(1, scale=np.array([0.35]), center=np.array([[0.4, 0.45]])), size=256)
    x, y, w, h = detect_face_box(image[0])
    assert abs(x + w / 2 - 0.4 * 256) < 15 and abs(y + h / 2 - 0.45 * 256) < 20 and 70 < w < 180
    assert detect_face_box(np.full((40, 60, 3), 90, np.uint8)) == (10, 0, 40, 40)  # none: the central square


def test_dfew_layout_and_folds(tmp_path):
    from datamodules.micro_expression import DFEWDataModule

    root = tmp_path / "DFEW"
    for clip, count in (("00001", 30), ("00002", 12), ("00003", 40)):
        write_frames(root / "Clip" / "clip_224x224" / clip, range(1, count + 1), clip + "_{:05d}.jpg", size=32)
    for split, rows in (("train", ["1,1", "2,7"]), ("test", ["3,5"])):
        folder = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        folder.mkdir(parents=True)
        (folder / "set_2.csv").write_text("video_name,label\n" + "\n".join(rows) + "\n")
    dm = DFEWDataModule(root, fold=2, num_frames=5, image_size=16, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert [c.emotion for c in dm.list_clips()] == ["happy", "fear", "surprise"]
    assert [p.name for p in dm.list_clips()[0].frames] == [f"00001_{i:05d}.jpg" for i in (1, 8, 15, 23, 30)]
    assert len(dm.train_set) == 2 and dm.test_set.names == ["00003"] and dm.test_set[0]["label"] == 4
    assert next(iter(dm.train_dataloader()))["video"].shape == (2, 5, 6, 16, 16)
    with pytest.raises(DatasetError, match="set_1.csv"):
        DFEWDataModule(root, fold=1).setup("fit")
