"""Deterministic train/test splits: hold-out, stratified k-fold, and k-fold grouped by subject.

Each function returns index lists and depends only on its arguments (seed included), so a split is the
same on every rank and every run. Group k-fold keeps all samples of one subject (or recording) on the
same side, which subject-independent protocols (EEG, speech, face video) require.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def holdout_split(num_items: int, test_size: float = 0.2, random_state: int = 41,
                  stratify: Optional[Sequence] = None) -> tuple[list[int], list[int]]:
    """(train, test) indices: sklearn's ``train_test_split`` as in the UNeXt code (test 20 %, seed 41)."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(list(range(num_items)), test_size=test_size, random_state=random_state,
                                   stratify=None if stratify is None else list(stratify))
    return list(train), list(test)


def kfold_split(labels: Sequence, folds: int, fold: int, random_state: int = 42) -> tuple[list[int], list[int]]:
    """(train, test) indices of fold ``fold`` of ``StratifiedKFold(folds, shuffle=True, random_state)``."""
    from sklearn.model_selection import StratifiedKFold

    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    train, test = list(splitter.split(np.zeros(len(labels)), list(labels)))[fold]
    return train.tolist(), test.tolist()


def group_kfold_split(groups: Sequence, folds: int, fold: int, labels: Optional[Sequence] = None,
                      random_state: int = 42) -> tuple[list[int], list[int]]:
    """(train, test) indices of fold ``fold``, with every group (subject, recording) wholly on one side.

    With ``labels``: sklearn's ``StratifiedGroupKFold`` (class balance kept as far as the groups allow);
    without: ``GroupKFold`` over shuffled groups. ``random_state`` fixes the assignment of groups to folds.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    groups = list(groups)
    if len(set(groups)) < folds:
        raise ValueError(f"{len(set(groups))} groups cannot fill {folds} folds")
    if labels is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
        splits = splitter.split(np.zeros(len(groups)), list(labels), groups)
    else:
        # GroupKFold balances fold sizes deterministically; relabelling the groups in a seeded random
        # order makes the assignment depend on the seed rather than on the groups' sort order.
        unique = sorted(set(groups), key=str)
        order = np.random.default_rng(random_state).permutation(len(unique))
        rank = {g: int(order[i]) for i, g in enumerate(unique)}
        splits = GroupKFold(n_splits=folds).split(np.zeros(len(groups)), groups=[rank[g] for g in groups])
    train, test = list(splits)[fold]
    return sorted(train.tolist()), sorted(test.tolist())


def leave_one_group_out(groups: Sequence, held_out) -> tuple[list[int], list[int]]:
    """(train, test) indices with every sample of group ``held_out`` in test (leave-one-subject-out)."""
    groups = list(groups)
    if held_out not in groups:
        raise ValueError(f"group {held_out!r} is not among the {len(set(groups))} groups")
    test = [i for i, g in enumerate(groups) if g == held_out]
    train = [i for i, g in enumerate(groups) if g != held_out]
    return train, test
