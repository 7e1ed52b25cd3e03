"""GECV (Group-level Emotion on Crowded Videos; Quach et al. 2022): 627 videos, 408 public, three classes
(Positive, Neutral, Negative). No official split: GER-STGAT reports the mean of a 10-fold cross-validation
(stratified folds, fixed seed: choice); ``fold`` picks the held-out fold, which is both the test and the
validation loader (no separate validation data in the protocol; the configs test the final epoch's model).

Layout (not standardised): class sub-folders ``Positive/*.mp4``, ``Neutral/*.mp4``, ``Negative/*.mp4`` (any case),
or a manifest ``labels.csv`` (``path,label``). Features in ``features/<video id>.npz``
(``datamodules.group_video_features``).
"""
from __future__ import annotations

from datamodules.group_video_features import (CLASSES, FEATURE_LAYOUT, GroupVideo, GroupVideoDataModule,
                                              read_manifest)
from datamodules.splits import kfold_split

LAYOUT = """\
<root>/Positive/*.mp4, Neutral/*.mp4, Negative/*.mp4   class folders (any case), or <root>/labels.csv ('path,label')
""" + FEATURE_LAYOUT + """
                                   e.g. python -m datamodules.group_video_features extract --videos <root> --out <root>/features --frames 15"""


class GECVDataModule(GroupVideoDataModule):
    """GECV feature caches, fold ``fold`` of a stratified ``folds``-fold cross-validation.

    Args:
        data_dir: the dataset root.
        num_frames: T = 15 (the paper's).
        folds, fold, split_seed: the cross-validation (10 folds; seed 42: choice).
        Others: ``GroupVideoDataModule``.
    """

    layout = LAYOUT

    def __init__(self, data_dir: str = "data/gecv", num_frames: int = 15, folds: int = 10, fold: int = 0,
                 split_seed: int = 42, **kwargs):
        super().__init__(data_dir=data_dir, num_frames=num_frames, **kwargs)
        if not 0 <= fold < folds:
            raise ValueError(f"fold must be in [0, {folds}), got {fold}")
        self.folds, self.fold, self.split_seed = folds, fold, split_seed

    def read_videos(self) -> list[tuple[str, int]]:
        manifest = self.data_dir / "labels.csv"
        if manifest.is_file():
            try:
                return read_manifest(manifest)
            except (ValueError, IndexError) as error:
                raise self.error(f"bad GECV manifest ({error})", manifest) from error
        folders = {d.name.lower(): d for d in self.data_dir.iterdir() if d.is_dir()}
        videos = []
        for index, name in enumerate(CLASSES):
            folder = folders.get(name.lower())
            if folder is None:
                raise self.error(f"GECV class folder {name}/ missing (and no labels.csv)", self.data_dir / name)
            videos += [(p.stem, index) for p in sorted(folder.glob("*.mp4"))]
        return videos

    def list_videos(self) -> dict[str, list[GroupVideo]]:
        if not self.data_dir.is_dir():
            raise self.error("GECV folder not found", self.data_dir)
        videos = sorted(self.read_videos())
        if len(videos) < self.folds:
            raise self.error(f"{len(videos)} videos cannot fill {self.folds} folds", self.data_dir)
        train, test = kfold_split([label for _, label in videos], self.folds, self.fold, self.split_seed)
        make = lambda idx: [GroupVideo(self.feature_path(videos[i][0]), videos[i][1], videos[i][0]) for i in idx]
        return {"train": make(train), "val": make(test), "test": make(test)}
