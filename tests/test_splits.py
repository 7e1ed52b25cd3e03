"""Splits: deterministic, disjoint, covering, and subject-wise where they must be."""
import pytest

from datamodules.splits import group_kfold_split, holdout_split, kfold_split, leave_one_group_out


def test_kfold_folds_partition_the_items_and_keep_class_balance():
    labels = [0] * 12 + [1] * 8
    tests = [kfold_split(labels, 4, fold)[1] for fold in range(4)]
    assert sorted(i for t in tests for i in t) == list(range(20))
    assert all(sum(labels[i] for i in t) == 2 for t in tests)  # 8 positives / 4 folds


def test_holdout_is_deterministic_given_the_seed():
    assert holdout_split(50, 0.2, 41) == holdout_split(50, 0.2, 41)
    assert holdout_split(50, 0.2, 41) != holdout_split(50, 0.2, 7)


@pytest.mark.parametrize("with_labels", [False, True])
def test_group_kfold_never_splits_a_subject(with_labels):
    groups = [f"s{i // 5}" for i in range(40)]  # 8 subjects x 5 windows
    labels = [int(g[1:]) % 2 for g in groups] if with_labels else None
    seen_test = []
    for fold in range(4):
        train, test = group_kfold_split(groups, 4, fold, labels=labels, random_state=3)
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        assert sorted(train + test) == list(range(40))
        seen_test += test
    assert sorted(seen_test) == list(range(40))
    assert group_kfold_split(groups, 4, 1, labels=labels, random_state=3) == \
        group_kfold_split(groups, 4, 1, labels=labels, random_state=3)


def test_group_kfold_assignment_depends_on_the_seed():
    groups = [i // 2 for i in range(40)]
    assignments = {tuple(group_kfold_split(groups, 5, 0, random_state=seed)[1]) for seed in range(6)}
    assert len(assignments) > 1


def test_group_kfold_and_leave_one_out_errors():
    with pytest.raises(ValueError, match="groups cannot fill"):
        group_kfold_split([0, 0, 1, 1], 3, 0)
    with pytest.raises(ValueError, match="fold must be in"):
        group_kfold_split([0, 1, 2], 3, 3)
    train, test = leave_one_group_out(["a", "b", "a", "c"], "a")
    assert (train, test) == ([1, 3], [0, 2])
    with pytest.raises(ValueError, match="not among"):
        leave_one_group_out(["a"], "z")
