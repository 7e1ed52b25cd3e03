"""The study runner: expansion of repeats, placeholders, commands, resuming, the table and the figure."""
import json
from pathlib import Path

import pytest
import yaml

import study
from study import StudyError, expand_runs, run_study, summarise

BLOBS = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "logger": False,
                "enable_progress_bar": False, "enable_model_summary": False},
    "model": {"class_path": "lightning_modules.tasks.classification.ClassificationTask",
              "init_args": {"network": {"class_path": "tests.study_fixture.BlobNet"}, "num_classes": 3,
                            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.02}}}},
    "data": {"class_path": "tests.study_fixture.BlobData"},
    "paper": {"test/acc": 0.9},
}


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_expansion_labels_and_placeholders(tmp_path):
    spec = {"runs": [
        {"name": "m{variant}_s{seed}", "config": "a.yaml", "label": "{variant}",
         "repeat": {"variant": ["x", "y"], "seed": [0, 1, 2]}, "args": {"seed_everything": "{seed}"}},
        {"name": "ens", "config": ["a.yaml", "b.yaml"], "subcommand": "test",
         "args": {"ckpts": "{ckpts:mx_*}", "one": "{ckpt:my_s0}", "where": "{dir:my_s1}/x", "flag": True}}]}
    runs = expand_runs(spec, tmp_path)
    assert [r.name for r in runs[:3]] == ["mx_s0", "mx_s1", "mx_s2"] and len(runs) == 7
    assert {r.entry for r in runs[:6]} == {"x", "y"}
    done = {r.name: r for r in runs[:6]}
    for r in runs[:6]:
        (r.run_dir / "checkpoints").mkdir(parents=True)
        (r.run_dir / "checkpoints" / ("last.ckpt" if r.variables["seed"] else "best.ckpt")).write_text("")
    argv = study.command(runs[6], done, tmp_path, "runs", "s/1")
    assert argv[2] == "test"
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert json.loads(flags["--ckpts"]) == [str(tmp_path / f"mx_s{i}" / "checkpoints" / name)
                                            for i, name in ((0, "best.ckpt"), (1, "last.ckpt"), (2, "last.ckpt"))]
    assert flags["--one"].endswith("my_s0/checkpoints/best.ckpt") and flags["--where"] == f"{tmp_path}/my_s1/x"
    assert flags["--flag"] == "true" and flags["--run_id"] == "ens" and argv.count("--config") == 2
    assert study.substitute("{seed}", runs[1], done, tmp_path) == 1  # a lone variable keeps its type
    with pytest.raises(StudyError, match="names no earlier run"):
        study.substitute("{ckpt:later}", runs[6], done, tmp_path)
    with pytest.raises(StudyError, match="repeat"):
        expand_runs({"runs": [{"name": "same", "config": "a", "repeat": {"s": [0, 1]}}]}, tmp_path)


def test_a_repeat_list_gives_one_run_per_mapping(tmp_path):
    spec = {"runs": [{"name": "member{member}", "config": "a.yaml",
                      "repeat": [{"member": 0, "lr": 0.001, "opt": "torch.optim.Adam"},
                                 {"member": 1, "lr": 0.0003, "opt": "torch.optim.RMSprop"}],
                      "args": {"model.init_args.optimizer.class_path": "{opt}", "trainer.max_epochs": "{lr}"}}]}
    runs = expand_runs(spec, tmp_path)
    assert [r.name for r in runs] == ["member0", "member1"] and runs[1].variables["lr"] == 0.0003
    flags = dict(zip(*(lambda a: (a[::2], a[1::2]))(study.command(runs[1], {}, tmp_path, "runs", "s/1")[2:])))
    assert flags["--model.init_args.optimizer.class_path"] == "torch.optim.RMSprop"
    assert {r.entry for r in runs} == {"member{member}"}  # pooled in one row
    with pytest.raises(StudyError, match="mappings"):
        expand_runs({"runs": [{"name": "m{x}", "config": "a", "repeat": [1, 2]}]}, tmp_path)


def test_summary_pools_by_label_and_keeps_the_top_k():
    results = [{"entry": "e", "run": f"r{i}", "variables": {}, "metrics": {"test/auroc": v, "test/acc": v / 2},
                "paper": {"test/auroc": 0.66}} for i, v in enumerate([0.5, 0.7, 0.9, 0.6])]
    summary = summarise(results, {"top_k": 2, "rank_by": "test/auroc"})
    assert summary["e"]["test/auroc"]["n"] == 2 and summary["e"]["test/auroc"]["mean"] == pytest.approx(0.8)
    assert summary["e"]["test/auroc"]["std"] == pytest.approx(0.1414213, abs=1e-6)  # sample std (ddof 1)
    assert summary["e"]["test/auroc"]["paper"] == 0.66 and summary["e"]["test/acc"]["mean"] == pytest.approx(0.4)


def test_a_study_runs_resumes_and_writes_its_table(tmp_path):
    config = write(tmp_path / "blobs.yaml", BLOBS)
    study_file = write(tmp_path / "study.yaml", {"study": {
        "runs": [{"name": "shift{shift}", "config": str(config), "label": "shift {shift}",
                  "args": {"data.init_args.shift": "{shift}"}, "repeat": {"shift": [0.0, 3.0]}},
                 {"name": "retest", "subcommand": "test", "config": str(config),
                  "args": {"ckpt_path": "{ckpt:shift3.0}", "data.init_args.shift": 3.0}}],
        "table": {"metrics": ["test/acc", "test/acc_prior"]}, "figure": {"metric": "test/acc"}}})
    folder = run_study(study_file, study_id="s", runs_dir=str(tmp_path / "runs"))
    summary = json.loads((folder / "summary.json").read_text())
    hard, easy, retest = summary["shift 0.0"], summary["shift 3.0"], summary["retest"]
    assert easy["test/acc"]["mean"] > hard["test/acc"]["mean"] + 0.3  # the easy problem is learnt
    assert retest["test/acc"]["mean"] == pytest.approx(easy["test/acc"]["mean"])  # same checkpoint, same data
    assert easy["test/acc"]["paper"] == 0.9 and "paper 0.9" in (folder / "summary.md").read_text()
    assert (folder / "figure.png").stat().st_size > 3_000 and (folder / "results.csv").read_text().count("\n") == 4
    # resume: finished runs are kept, not rerun
    stamp = (folder / "shift0.0" / "results.json").stat().st_mtime_ns
    run_study(study_file, study_id="s", runs_dir=str(tmp_path / "runs"), only=["shift0.0"])
    assert (folder / "shift0.0" / "results.json").stat().st_mtime_ns == stamp
