"""CutiViral (Kanekar et al., ICPR 2024): 200 clinical skin-lesion crops of Indian patients, 50 per class
(Herpes simplex, Herpes zoster, Molluscum contagiosum, Non-viral), from Katihar Medical College (private,
"available on request").

The reader takes the dataset as an ImageFolder, ``<data_dir>/<class>/*.jpg|png``, class folder names mapped by
``aliases`` (defaults cover the spellings of the paper's tables), and an optional ``<data_dir>/splits.csv``
(``image,split_iter,subset``) that fixes the paper's three random iterations. Without it, each iteration
``split_seed`` draws ``test_per_class`` (15) test images per class and keeps ``train_per_class`` (35) for
training, of which ``val_per_class`` (5) are held out for early stopping (the card's choice: the paper does not
say what it monitored).

Training-set regimes (paper Sect. 6.1-6.4), applied to the training split only:

- ``original``: the training images;
- ``geometric``: each training image plus 6 pre-generated copies (horizontal flip, vertical flip, rotations by
  90/180/270 degrees, transpose: the sixth is the card's choice), generated offline once, not at random;
- ``generated``: the training images plus the generator's images read from
  ``<generated_dir>/<generation_method>/<n_generated>/<class>/*.png`` (written by ``python run.py predict`` with a
  WGAN or CAE config and ``lightning_modules.cutiviral.GeneratedImageWriter``).

For training a generator: ``class_index`` keeps one class (train/val/test), and ``generate: N`` makes the predict
set N items per kept class, each a training image drawn at random (the CAE's input; the WGAN ignores it and draws
its noise from the item index).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

CLASSES = ("herpes_simplex", "herpes_zoster", "molluscum_contagiosum", "non_viral")

#: folder spellings -> class names (the paper's table headers and common variants)
DEFAULT_ALIASES = {
    "Herpes simplex": "herpes_simplex", "Herpes Simplex": "herpes_simplex", "herpes simplex": "herpes_simplex",
    "HerpesSimplex": "herpes_simplex", "herpes-simplex": "herpes_simplex",
    "Herpes zoster": "herpes_zoster", "Herpes Zoster": "herpes_zoster", "herpes zoster": "herpes_zoster",
    "HerpesZoster": "herpes_zoster", "herpes-zoster": "herpes_zoster",
    "Molluscum contagiosum": "molluscum_contagiosum", "Molluscum Contagiosum": "molluscum_contagiosum",
    "molluscum contagiosum": "molluscum_contagiosum", "Molluscum": "molluscum_contagiosum",
    "molluscum": "molluscum_contagiosum", "molluscum-contagiosum": "molluscum_contagiosum",
    "Non-viral": "non_viral", "Non-Viral": "non_viral", "Non viral": "non_viral", "non-viral": "non_viral",
    "nonviral": "non_viral", "NonViral": "non_viral",
}


def _transpose(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(image, 0, 1))


#: the geometric regime's six offline copies, in order (same pixels as albumentations' HorizontalFlip,
#: VerticalFlip, Transpose with p=1 and np.rot90; tested)
GEOMETRIC: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hflip": lambda image: np.ascontiguousarray(image[:, ::-1]),
    "vflip": lambda image: np.ascontiguousarray(image[::-1]),
    "rot90": lambda image: np.ascontiguousarray(np.rot90(image, 1)),
    "rot180": lambda image: np.ascontiguousarray(np.rot90(image, 2)),
    "rot270": lambda image: np.ascontiguousarray(np.rot90(image, 3)),
    "transpose": _transpose,
}

Regime = Literal["original", "geometric", "generated"]


@dataclass(frozen=True)
class CutiViralItem(ClassificationItem):
    """An item with an optional offline geometric transform (one of ``GEOMETRIC``), applied once at load."""

    geometric: str = ""


class CutiViralDataModule(ImageClassificationDataModule):
    """The CutiViral ImageFolder with the paper's 35/15 per-class splits and its three training regimes.

    Args:
        data_dir: the dataset root (one folder per class).
        regime: ``original``, ``geometric`` (6 offline copies per training image) or ``generated``.
        generated_dir: root of the generated images (``generated`` regime): ``<generated_dir>/<method>/<N>/<class>/``.
            The generators are trained on one split's training images, so each split iteration has its own root.
        generation_method, n_generated: the ``<method>`` (``wgan``, ``cae``) and ``<N>`` (per class) folders read.
        aliases: folder name -> class name, added to ``DEFAULT_ALIASES``.
        splits_csv: the split file, relative to ``data_dir`` (used when it exists): rows ``image`` (path relative
            to ``data_dir``, or a file name), ``split_iter`` (the iteration: rows with ``split_iter == split_seed``
            are used), ``subset`` (``train``, ``val`` or ``test``; without ``val`` rows the validation images are
            drawn from ``train``).
        train_per_class, test_per_class: images per class of the random splits (paper: 35 / 15).
        val_per_class: training images per class held out for early stopping (5); 0: validate on the training
            images (generators, which train on all 35).
        class_index: keep only this class (per-class generators); None: all four.
        generate: make the predict set ``generate`` random training images per kept class (generation runs).
        image_size, normalization, split_seed, batch_size, ...: as ``ImageClassificationDataModule``
            (``split_seed`` 0, 1, 2 = the paper's three iterations).
    """

    layout = """<data_dir>/
  herpes_simplex/*.jpg|png          50 lesion crops per class (512x512 in the paper); folder names may be
  herpes_zoster/*.jpg|png           aliases ("Herpes Zoster", "Non-Viral", ... or `aliases`)
  molluscum_contagiosum/*.jpg|png
  non_viral/*.jpg|png
  splits.csv                        optional: image,split_iter,subset (subset train|val|test)
<generated_dir>/<method>/<N>/<class>/*.png   generated images (regime: generated), from `python run.py predict`
                                             with experiments/cutiviral/{wgan,cae}_generator.yaml"""
    standin_config = "experiments/cutiviral_demo.yaml"
    classes = CLASSES

    def __init__(self, data_dir: str = "", regime: Regime = "original", generated_dir: Optional[str] = None,
                 generation_method: str = "wgan", n_generated: int = 100, aliases: Optional[dict[str, str]] = None,
                 splits_csv: str = "splits.csv", train_per_class: int = 35, test_per_class: int = 15,
                 val_per_class: int = 5, class_index: Optional[int] = None, generate: Optional[int] = None,
                 image_size: int | Sequence[int] = 224, normalization: Literal["imagenet", "unit"] = "imagenet",
                 augmentation: str = "none", split_seed: int = 0, preload: bool = True, batch_size: int = 32,
                 num_workers: int = 2, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None,
                 standin_config: Optional[str] = None):
        super().__init__(data_dir, image_size=image_size, channels=3, normalization=normalization,
                         augmentation=augmentation, split="predefined", val_fraction=0.0, split_seed=split_seed,
                         preload=preload, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size, standin_config=standin_config)
        if regime not in ("original", "geometric", "generated"):
            raise ValueError(f"regime must be original, geometric or generated, got {regime!r}")
        if min(train_per_class, test_per_class) < 1 or not 0 <= val_per_class < train_per_class:
            raise ValueError("need train_per_class >= 1, test_per_class >= 1, 0 <= val_per_class < train_per_class")
        if class_index is not None and not 0 <= class_index < len(CLASSES):
            raise ValueError(f"class_index must be in [0, {len(CLASSES)}), got {class_index}")
        if generate is not None and generate < 1:
            raise ValueError(f"generate must be >= 1, got {generate}")
        self.regime = regime
        self.generated_dir = Path(generated_dir).expanduser() if generated_dir else None
        self.generation_method, self.n_generated = generation_method, n_generated
        self.aliases = {**DEFAULT_ALIASES, **(aliases or {})}
        self.splits_csv = splits_csv
        self.train_per_class, self.test_per_class, self.val_per_class = train_per_class, test_per_class, val_per_class
        self.class_index, self.generate = class_index, generate

    # ---- items ----
    def list_items(self) -> list[ClassificationItem]:
        if self.data_dir is None:
            raise self.error("data_dir is not set (--data.init_args.data_dir D)")
        return [CutiViralItem(item.source, item.label, name=item.name)
                for item in self.folder_items(self.data_dir, CLASSES, self.aliases)]

    def preprocess(self, image: np.ndarray, item: ClassificationItem) -> np.ndarray:
        transform = getattr(item, "geometric", "")
        return GEOMETRIC[transform](image) if transform else image

    def generated_items(self) -> list[ClassificationItem]:
        """The generator's images of the kept classes, ``<generated_dir>/<method>/<N>/<class>/*.png``."""
        if self.generated_dir is None:
            raise self.error("regime 'generated' needs generated_dir (--data.init_args.generated_dir D_GEN)")
        root = self.generated_dir / self.generation_method / str(self.n_generated)
        hint = (f"generate them first: python run.py predict --config experiments/cutiviral/"
                f"{self.generation_method}_generator.yaml ... (see docs/papers/cutiviral.md)")
        if not root.is_dir():
            raise self.error("generated images not found", root, hint=hint)
        kept = [CLASSES[self.class_index]] if self.class_index is not None else list(CLASSES)
        items = self.folder_items(root, kept)
        offset = CLASSES.index(kept[0]) if len(kept) == 1 else 0
        return [CutiViralItem(item.source, item.label + offset, name=f"gen_{item.name}") for item in items]

    # ---- splits ----
    def _csv_splits(self, path: Path) -> dict[str, list[int]]:
        by_path = {}
        for index, item in enumerate(self.items):
            if isinstance(item.source, Path):
                by_path[item.source.relative_to(self.data_dir).as_posix()] = index
                by_path.setdefault(item.source.name, index)
        splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"image", "split_iter", "subset"} <= set(rows[0]):
            raise self.error("splits.csv needs the columns image,split_iter,subset", path)
        for line, row in enumerate(rows, start=2):
            try:
                iteration = int(row["split_iter"])
            except ValueError:
                raise self.error(f"line {line}: split_iter {row['split_iter']!r} is not an integer", path) from None
            if iteration != self.split_seed:
                continue
            subset = row["subset"].strip().lower()
            if subset not in splits:
                raise self.error(f"line {line}: subset {row['subset']!r} is not train, val or test", path)
            image = row["image"].strip().replace("\\", "/")
            if image not in by_path:
                raise self.error(f"line {line}: image {image!r} is not in the dataset", path)
            splits[subset].append(by_path[image])
        if not splits["train"] or not splits["test"]:
            raise self.error(f"splits.csv has no train or test rows for split_iter {self.split_seed}", path)
        if not splits["val"]:
            splits["train"], splits["val"] = self._hold_out_val(splits["train"])
        return splits

    def _hold_out_val(self, train: list[int]) -> tuple[list[int], list[int]]:
        """``val_per_class`` random training images per class (0: validate on the training images)."""
        if self.val_per_class == 0:
            return train, list(train)
        rng = np.random.default_rng([self.split_seed, 1])
        keep, val = [], []
        for label in range(len(CLASSES)):
            members = [i for i in train if self.items[i].label == label]
            members = [members[j] for j in rng.permutation(len(members))]
            val += members[:self.val_per_class]
            keep += members[self.val_per_class:]
        return keep, val

    def make_splits(self) -> dict[str, list[int]]:
        path = self.data_dir / self.splits_csv if self.data_dir is not None and self.splits_csv else None
        if path is not None and path.is_file():
            splits = self._csv_splits(path)
        else:
            rng = np.random.default_rng([self.split_seed, 0])
            train, test = [], []
            for label in range(len(CLASSES)):
                members = [i for i, item in enumerate(self.items) if item.label == label]
                if len(members) < self.test_per_class + 2:
                    raise self.error(f"class '{CLASSES[label]}' has {len(members)} images, need at least "
                                     f"{self.test_per_class + 2} (test_per_class={self.test_per_class})", self.data_dir)
                members = [members[j] for j in rng.permutation(len(members))]
                test += members[:self.test_per_class]
                train += members[self.test_per_class:self.test_per_class + self.train_per_class]
            train, val = self._hold_out_val(train)
            splits = {"train": train, "val": val, "test": test}
        if self.class_index is not None:
            splits = {k: [i for i in v if self.items[i].label == self.class_index] for k, v in splits.items()}
        return {k: sorted(v) for k, v in splits.items()}

    # ---- datasets ----
    def training_items(self, items: Sequence[ClassificationItem]) -> list[ClassificationItem]:
        """The training split under ``regime``: originals (+ their 6 geometric copies, or + generated images)."""
        items = list(items)
        if self.regime == "geometric":
            items += [CutiViralItem(item.source, item.label, name=f"{item.name}_{op}", geometric=op)
                      for item in list(items) for op in GEOMETRIC]
        elif self.regime == "generated":
            items += self.generated_items()
        return items

    def make_dataset(self, items, train: bool):
        return super().make_dataset(self.training_items(items) if train else items, train)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        super().setup(stage)
        if self.generate is not None:
            rng = np.random.default_rng([self.split_seed, 2, self.class_index if self.class_index is not None else -1])
            train = [self.items[i] for i in self.split_indices["train"]]
            sources = []
            for label in sorted({item.label for item in train}):
                members = [item for item in train if item.label == label]
                for k, j in enumerate(rng.integers(0, len(members), self.generate)):
                    sources.append(CutiViralItem(members[j].source, label, name=f"{CLASSES[label]}_{k:04d}"))
            self.predict_set = super().make_dataset(sources, train=False)
