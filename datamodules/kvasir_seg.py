"""Kvasir-SEG (polyp segmentation) and PolypGen (its out-of-distribution test, HarmonizedSS Table 3).

Kvasir-SEG (Jha et al. 2020, https://datasets.simula.no/kvasir-seg/): 1000 colonoscopy images with binary polyp
masks (JPEG, foreground > 127). The "official split" of 880 training / 120 test images is the pair of id lists
``train.txt`` / ``val.txt`` published with the dataset; put them in ``<data_dir>`` (or name their folder with
``split_dir``). Without them the split is a seeded 880/120 holdout (``test_size`` 0.12).

PolypGen (Ali et al. 2023): 1537 single frames from 6 centres, ``data_C<k>/images_C<k>/<id>.jpg`` with
``data_C<k>/masks_C<k>/<id>_mask.jpg``; the sequence data (``sequenceData/``) is not read. ``polypgen_dir`` makes
every PolypGen frame a further test set (``test/polypgen/...``), one per centre with ``polypgen_per_centre``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, find_image, list_images

KVASIR_LAYOUT = """<data_dir>/                (the Kvasir-SEG folder of kvasir-seg.zip)
  images/<id>.jpg            1000 RGB colonoscopy images
  masks/<id>.jpg             binary polyp masks (foreground > 127), same size as their image
  train.txt, val.txt         optional: the official 880/120 id lists (one id per line)"""

POLYPGEN_LAYOUT = """<polypgen_dir>/
  data_C1/images_C1/<id>.jpg, data_C1/masks_C1/<id>_mask.jpg
  ...
  data_C6/images_C6/<id>.jpg, data_C6/masks_C6/<id>_mask.jpg     (1537 frames in all)"""


def polypgen_items(root: Path, error, centres: Sequence[int] = (1, 2, 3, 4, 5, 6)) -> dict[int, list[SegmentationItem]]:
    """PolypGen's single frames per centre: ``{k: [items]}``; ``error(problem, path)`` builds the exception."""
    out = {}
    for k in centres:
        images, masks = root / f"data_C{k}" / f"images_C{k}", root / f"data_C{k}" / f"masks_C{k}"
        if not images.is_dir():
            raise error(f"PolypGen centre {k} image folder not found", images)
        if not masks.is_dir():
            raise error(f"PolypGen centre {k} mask folder not found", masks)
        items = []
        for image in list_images(images, (".jpg", ".jpeg", ".png", ".tif")):
            mask = find_image(masks, f"{image.stem}_mask") or find_image(masks, image.stem)
            if mask is None:
                raise error(f"image without a mask (looked for {image.stem}_mask.jpg)", masks)
            items.append(SegmentationItem(image, (mask,), name=f"C{k}_{image.stem}"))
        out[k] = items
    return out


class ExtraTestSetsMixin:
    """Adds further labelled test sets (``self.test_sets``) built from item lists with the eval transform."""

    def add_test_set(self, name: str, items: Sequence[SegmentationItem]) -> None:
        from datamodules.segmentation import build_transform

        transform = build_transform(self.image_size, self.channels, self.normalization)
        self.test_sets[name] = self.make_dataset(list(items), transform)


class KvasirSEGDataModule(ExtraTestSetsMixin, SegmentationDataModule):
    """Kvasir-SEG (official split from ``train.txt``/``val.txt`` when present), optionally tested on PolypGen too.

    Args:
        split_dir: folder of ``train.txt``/``val.txt`` (default: ``data_dir``); missing lists: seeded holdout.
        polypgen_dir: PolypGen's root: every frame becomes the further test set ``polypgen``.
        polypgen_per_centre: one test set per centre (``polypgen_C1`` ...) instead of one.
        (the rest: ``SegmentationDataModule``'s; ``test_size`` 0.12 gives 880/120 without the lists)
    """

    layout = KVASIR_LAYOUT
    standin_config = "experiments/harmss_demo.yaml"

    def __init__(self, data_dir: str, split_dir: Optional[str] = None, polypgen_dir: Optional[str] = None,
                 polypgen_per_centre: bool = False, test_size: float = 0.12, **kwargs):
        super().__init__(data_dir, test_size=test_size, **kwargs)
        self.split_dir = Path(split_dir).expanduser() if split_dir else None
        self.polypgen_dir = Path(polypgen_dir).expanduser() if polypgen_dir else None
        self.polypgen_per_centre = polypgen_per_centre

    def list_items(self) -> list[SegmentationItem]:
        root = self.release_root("Kvasir-SEG")
        images = self.require_dir(root / "images", "images folder")
        masks = self.require_dir(root / "masks", "masks folder")
        items = []
        for image in list_images(images, (".jpg", ".jpeg", ".png")):
            mask = find_image(masks, image.stem)
            if mask is None:
                raise self.error(f"image without a mask (looked for {masks / image.stem}.jpg)", image)
            items.append(SegmentationItem(image, (mask,)))
        return items

    def official_lists(self) -> Optional[tuple[list[str], list[str]]]:
        folder = self.split_dir or self.release_root("Kvasir-SEG")
        train, test = folder / "train.txt", folder / "val.txt"
        if not (train.is_file() and test.is_file()):
            if self.split_dir is not None:
                raise self.error("official split lists not found (train.txt and val.txt)", folder)
            return None
        read = lambda path: [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]  # noqa: E731
        return read(train), read(test)

    def make_splits(self) -> dict[str, list[int]]:
        lists = self.official_lists()
        if lists is None:
            return super().make_splits()
        index = {item.name: i for i, item in enumerate(self.items)}
        unknown = [name for name in lists[0] + lists[1] if name not in index]
        if unknown:
            raise self.error(f"{len(unknown)} ids of the split lists have no image (first: {unknown[0]})",
                             self.data_dir)
        train, test = [index[n] for n in lists[0]], [index[n] for n in lists[1]]
        val = test
        if self.val_fraction > 0:
            from datamodules.splits import holdout_split

            rel_train, rel_val = holdout_split(len(train), self.val_fraction, self.split_seed)
            train, val = [train[i] for i in rel_train], [train[i] for i in rel_val]
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    def setup(self, stage: Optional[str] = None) -> None:
        fresh = not self.items
        super().setup(stage)
        if fresh and self.polypgen_dir is not None:
            error = lambda problem, path: self.error(problem, path, hint=f"PolypGen layout:\n{POLYPGEN_LAYOUT}")  # noqa: E731
            centres = polypgen_items(self.polypgen_dir, error)
            if self.polypgen_per_centre:
                for k, items in centres.items():
                    self.add_test_set(f"polypgen_C{k}", items)
            else:
                self.add_test_set("polypgen", [item for items in centres.values() for item in items])
