"""AudioSet, Speech Commands V2 and ESC-50 loaders on tiny fixture trees in their public layouts."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.audio_io import write_audio
from datamodules.audioset import AudioSetDataModule, label_weights, read_segments
from datamodules.base import DatasetError
from datamodules.esc50 import ESC50DataModule
from datamodules.speech_commands import WORDS, SpeechCommandsDataModule

ROOT = Path(__file__).resolve().parents[1]


def _tone(rate, seconds, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- AudioSet -------------------------------------------------------------------------------------------
def write_audioset_tree(root: Path):
    mids = [f"/m/{i:05d}" for i in range(527)]
    root.mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f'{i},{m},"Class {i}, name"\n' for i, m in enumerate(mids)))
    header = ("# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=3, num_segs=3, num_unique_labels=3, "
              "num_positive_labels=4\n# YTID, start_seconds, end_seconds, positive_labels\n")
    balanced = [("--PJHxphWEs", "30.000", "40.000", f"{mids[0]},{mids[5]}"), ("--ZhevVpy1s", "50.000", "60.000", mids[5]),
                ("--aE2O5G5WE", "0.000", "10.000", mids[526]), ("-0BIyqJj9ZU", "30.000", "40.000", mids[1])]
    evaluation = [("--4gqARaEJE", "0.000", "10.000", f"{mids[0]},{mids[1]}"), ("--BfvyPmVMo", "20.000", "30.000", mids[5])]
    for name, rows in (("balanced_train_segments.csv", balanced), ("eval_segments.csv", evaluation)):
        (root / name).write_text(header + "".join(f'{y}, {s}, {e}, "{labels}"\n' for y, s, e, labels in rows))
    # Clips as users download them: plain id, PANNs' Y prefix, id_start_end; one clip missing.
    write_audio(root / "audio" / "balanced_train" / "--PJHxphWEs.wav", _tone(32000, 10.5), 32000)
    write_audio(root / "audio" / "balanced_train" / "Y--ZhevVpy1s.wav", _tone(16000, 4.0), 16000)
    write_audio(root / "audio" / "balanced_train" / "-0BIyqJj9ZU_30000_40000.flac", _tone(16000, 10.0), 16000)
    write_audio(root / "audio" / "eval" / "--4gqARaEJE.wav", _tone(16000, 10.0), 16000)
    write_audio(root / "audio" / "eval" / "--BfvyPmVMo.wav", _tone(44100, 10.0), 44100)
    return mids


def test_audioset_reads_the_official_csvs_and_clip_folders(tmp_path):
    write_audioset_tree(tmp_path / "as")
    assert read_segments(tmp_path / "as" / "eval_segments.csv")[0] == ("--4gqARaEJE", ["/m/00000", "/m/00001"])
    dm = AudioSetDataModule(tmp_path / "as", num_workers=0, batch_size=2)
    with pytest.warns(UserWarning, match="1 of 4 clips.*--aE2O5G5WE"):
        dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.test_set) == 2 and dm.val_set is dm.test_set
    item = dm.train_set[0]
    assert item["audio"].shape == (160000,) and item["audio"].dtype == torch.float32  # 32 kHz 10.5 s -> 16 kHz 10 s
    assert torch.equal(torch.nonzero(item["label"]).flatten(), torch.tensor([0, 5])) and item["label"].shape == (527,)
    short = dm.train_set[1]["audio"]
    assert short[64000:].abs().max() == 0 and short[:64000].abs().max() > 0.2  # 4 s clip zero-padded to 10 s
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 160000) and batch["label"].shape == (2, 527)


def test_audioset_missing_clips_can_be_an_error_and_missing_csv_names_the_layout(tmp_path):
    write_audioset_tree(tmp_path / "as")
    with pytest.raises(DatasetError, match="1 of 4 clips"):
        AudioSetDataModule(tmp_path / "as", missing_clips="error").setup("fit")
    (tmp_path / "as" / "eval_segments.csv").unlink()
    with pytest.raises(DatasetError, match="segments file not found.*eval_segments.csv") as error:
        with pytest.warns(UserWarning):
            AudioSetDataModule(tmp_path / "as").setup("fit")
    assert "balanced_train_segments.csv" in str(error.value) and "experiments/asda_demo.yaml" in str(error.value)


def test_audioset_label_balancing_weights_and_sampler(tmp_path):
    weights = label_weights([[0, 5], [5], [1]], 527)
    assert weights == pytest.approx([1000 / 1.01 + 1000 / 2.01, 1000 / 2.01, 1000 / 1.01])
    write_audioset_tree(tmp_path / "as")
    dm = AudioSetDataModule(tmp_path / "as", weighted_samples_per_epoch=10, num_workers=0)
    with pytest.warns(UserWarning):
        dm.setup("fit")
    assert len(list(dm.train_sampler(dm.train_set))) == 10


# -- Speech Commands V2 -----------------------------------------------------------------------------------
def write_speech_commands_tree(root: Path):
    for w, word in enumerate(WORDS):
        for k in range(3):
            write_audio(root / word / f"{w:04x}abcd_nohash_{k}.wav", _tone(16000, 1.0 if k else 0.8, 200 + 20 * w), 16000)
    write_audio(root / "_background_noise_" / "white_noise.wav", np.zeros(16000, np.float32), 16000)
    (root / "validation_list.txt").write_text("".join(f"{word}/{w:04x}abcd_nohash_1.wav\n" for w, word in enumerate(WORDS)))
    (root / "testing_list.txt").write_text("".join(f"{word}/{w:04x}abcd_nohash_2.wav\n" for w, word in enumerate(WORDS)))


def test_speech_commands_official_split_and_35_classes(tmp_path):
    write_speech_commands_tree(tmp_path / "spc")
    dm = SpeechCommandsDataModule(tmp_path / "spc", num_workers=0, batch_size=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (35, 35, 35)
    assert dm.num_classes == 35 and WORDS.index("zero") == 34
    item = dm.train_set[0]  # backward/0000abcd_nohash_0.wav, 0.8 s -> padded to 1 s
    assert item["audio"].shape == (16000,) and int(item["label"]) == 0 and item["audio"][12800:].abs().max() == 0
    assert all(not p.endswith("white_noise.wav") for p in dm.train_set.paths)
    assert int(dm.test_set[34]["label"]) == 34


def test_speech_commands_missing_listed_file_and_corrupt_clip(tmp_path):
    write_speech_commands_tree(tmp_path / "spc")
    (tmp_path / "spc" / "yes" / "0021abcd_nohash_2.wav").unlink()
    with pytest.raises(DatasetError, match="not found.*yes/0021abcd_nohash_2.wav"):
        SpeechCommandsDataModule(tmp_path / "spc").setup("fit")
    write_speech_commands_tree(tmp_path / "spc2")
    (tmp_path / "spc2" / "bed" / "0001abcd_nohash_0.wav").write_bytes(b"RIFF0000WAVEjunk")
    dm = SpeechCommandsDataModule(tmp_path / "spc2")
    dm.setup("fit")
    with pytest.raises(DatasetError, match="Cannot decode.*bed/0001abcd_nohash_0.wav"):
        dm.train_set[dm.train_set.paths.index(str(tmp_path / "spc2" / "bed" / "0001abcd_nohash_0.wav"))]


# -- ESC-50 ---------------------------------------------------------------------------------------------
def write_esc50_tree(root: Path):
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(10):
        fold, target = i % 5 + 1, (7 * i) % 50
        name = f"{fold}-{100000 + i}-A-{target}.wav"
        write_audio(root / "audio" / name, _tone(44100, 5.0, 300 + 50 * i), 44100)
        lines.append(f"{name},{fold},{target},class{target},False,{100000 + i},A")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")


def test_esc50_folds_and_resampling(tmp_path):
    write_esc50_tree(tmp_path / "esc")
    dm = ESC50DataModule(tmp_path / "esc", fold=3, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.test_set) == 2 and dm.val_set is dm.test_set
    assert all(Path(p).name.startswith("3-") for p in dm.test_set.paths)
    item = dm.test_set[0]
    assert item["audio"].shape == (80000,) and int(item["label"]) == 14  # 5 s at 16 kHz; row i=2: target 14
    spectrum = np.abs(np.fft.rfft(item["audio"].numpy()))
    assert np.argmax(spectrum) == pytest.approx(400 * 5, abs=2)  # the 400 Hz tone survives resampling
    with pytest.raises(ValueError, match="fold"):
        ESC50DataModule(tmp_path / "esc", fold=6)


def test_esc50_missing_clip_names_the_file(tmp_path):
    write_esc50_tree(tmp_path / "esc")
    (tmp_path / "esc" / "audio" / "2-100001-A-7.wav").unlink()
    with pytest.raises(DatasetError, match="not found.*2-100001-A-7.wav"):
        ESC50DataModule(tmp_path / "esc").setup("fit")


def test_run_py_reports_missing_esc50_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "--config", "experiments/asda/finetune_esc50.yaml",
                           "--data.data_dir", "/nowhere", "--model.network.init_args.pretrained", "", "--runs_dir", str(tmp_path),
                           "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                           "--trainer.strategy", "auto"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "/nowhere/meta/esc50.csv" in proc.stderr
    assert "experiments/asda_demo.yaml" in proc.stderr


@pytest.mark.parametrize("config, writer, metric, paper", [
    ("asda/finetune_esc50.yaml", "esc50", "test/acc", 0.961),
    ("asda/finetune_spc2.yaml", "spc", "test/acc", 0.983),
    ("asda/finetune_as20k.yaml", "audioset", "test/mAP", 0.415),
])
def test_paper_finetuning_configs_run_on_the_real_layouts(tmp_path, config, writer, metric, paper):
    """Each dataset's paper config end to end on its fixture tree, with a small encoder, bf16, on the CPU."""
    import json
    import warnings

    import run

    {"esc50": write_esc50_tree, "spc": write_speech_commands_tree, "audioset": write_audioset_tree}[writer](tmp_path / "data")
    enc = "--model.network.init_args.encoder.init_args."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the AudioSet fixture's missing clip
        run.main(["--config", str(ROOT / "experiments" / config), "--data.data_dir", str(tmp_path / "data"),
                  "--model.network.init_args.pretrained", "", enc + "embed_dim", "32", enc + "depth", "1",
                  enc + "num_heads", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                  "--trainer.strategy", "auto", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2",
                  "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2", "--data.batch_size", "2",
                  "--data.num_workers", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                  "--runs_dir", str(tmp_path / "runs"), "--run_id", "r"])
    results = json.loads((tmp_path / "runs" / config[:-len(".yaml")].replace("/", "_") / "r" / "results.json").read_text())
    assert results["paper"][metric] == paper and 0.0 <= results[metric] <= 1.0


def test_paper_pretraining_config_runs_on_the_audioset_layout(tmp_path):
    """asda/pretrain_as2m.yaml (16 students, 64 x 8 patches, block masks of 5) on the AudioSet fixture."""
    import json
    import warnings

    import run

    write_audioset_tree(tmp_path / "as")
    enc = "--model.network.init_args.encoder.init_args."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = run.main(["--config", str(ROOT / "experiments" / "asda" / "pretrain_as2m.yaml"), "--data.data_dir", str(tmp_path / "as"),
                        "--data.train_split", "balanced", enc + "embed_dim", "32", enc + "depth", "1", enc + "num_heads", "2",
                        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
                        "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.logger", "false",
                        "--trainer.enable_progress_bar", "false", "--runs_dir", str(tmp_path / "runs"), "--run_id", "r"])
    assert cli.model.network.clone_batch == 16 and cli.model.network.student.grid == (64, 8)
    results = json.loads((tmp_path / "runs" / "asda_pretrain_as2m" / "r" / "results.json").read_text())
    assert results["test/loss"] > 0 and results["paper"]["parameters"] == 9.5e7
