"""Every config composition in experiments/ parses through run.py's CLI parser and builds its model (on the
meta device: no memory, no init cost) and its datamodule (no setup, so no data), so that no config rots.
Setting files may only name keys their base composition has (or that a class they switch to takes)."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

import run

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
COMPOSITIONS = run.all_compositions()
SETTINGS = [files for files in COMPOSITIONS if len(files) == 2]
PRESETS = sorted((EXPERIMENTS / "trainer").glob("*.yaml"))
DEMO = EXPERIMENTS / "fnoreg_demo.yaml"


def _id(files) -> str:
    return run.experiment_name(files)


@functools.lru_cache(maxsize=1)
def _parser():
    """run.py's parser, built once: building it costs seconds, a parse with it a fraction of one."""
    return run.parse_config(["fit", "--config", str(DEMO)]).parser


@functools.lru_cache(maxsize=None)
def _parse(files: tuple):
    args = ["fit"]
    for path in files:
        args += ["--config", str(path)]
    return _parser().parse_args(args)


def _resolved(files: tuple) -> dict:
    config = _parse(files)["fit"].clone()
    del config["config"]
    return config.as_dict()


def _flatten(tree, prefix=()) -> dict:
    if not isinstance(tree, dict) or not tree or prefix == ("paper",):  # paper: a free-form dict, one value
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, (*prefix, key)))
    return flat


def test_the_layout_has_bases_settings_and_demos():
    bases = {p for p in EXPERIMENTS.glob("*/*.yaml") if p.parent.name != "trainer"}  # <paper>/<dataset>.yaml
    assert {files[0] for files in SETTINGS} <= bases
    assert len(bases) >= 19 and len(SETTINGS) >= 171, (len(bases), len(SETTINGS))  # none lost
    assert (EXPERIMENTS / "fnoreg_demo.yaml") in {files[0] for files in COMPOSITIONS if len(files) == 1}
    assert not list(EXPERIMENTS.glob("*/*/*/*.yaml")), "settings are one level below their base"


@pytest.mark.parametrize("files", COMPOSITIONS + [[DEMO, preset] for preset in PRESETS],
                         ids=[_id(f) for f in COMPOSITIONS] + [f"fnoreg_demo+trainer/{p.stem}" for p in PRESETS])
def test_config_parses_and_builds_model_and_datamodule(files):
    with torch.device("meta"):
        built = _parser().instantiate(_parse(tuple(files)))["fit"]
    model, data = built["model"], built["data"]
    assert isinstance(model, LightningModule) and isinstance(data, LightningDataModule)
    assert all(p.is_meta for p in model.parameters())  # built without allocating or initialising weights


def _nodes(config: dict) -> set:
    """Every key path of a resolved config, inner nodes included (a setting may set a section to null)."""
    return {key[:i] for key in _flatten(config) for i in range(1, len(key) + 1)}


@pytest.mark.parametrize("files", SETTINGS, ids=[_id(f) for f in SETTINGS])
def test_setting_keys_exist_in_its_base(files):
    """A setting overrides its base; a key the base lacks is a typo unless the setting switches the class
    (class_path) of the section holding it, and then the new class must take it."""
    base, setting = files
    base_keys, composed_keys = (_nodes(_resolved(files)) for files in ((base,), (base, setting)))
    raw = yaml.safe_load(setting.read_text())
    raw_flat = _flatten(raw)
    switched = {key[:-1] for key in raw_flat if key[-1] == "class_path"}
    for key in raw_flat:
        if key in base_keys or key == ("paper",):
            continue
        assert any(key[:len(s)] == s for s in switched), f"{setting.name}: {'.'.join(key)} is not in {base.name}"
        assert key in composed_keys, f"{setting.name}: {'.'.join(key)} is not taken by the class it sets"
    assert "paper" in raw, f"{setting.name} has no paper: block"
    assert setting.read_text().startswith("# "), "the first line names the paper's table row"


@pytest.mark.parametrize("typo", [{"trainer": {"max_epoch": 5}},
                                  {"model": {"init_args": {"network": {"init_args": {"bottlenek": "aspp"}}}}},
                                  {"data": {"init_args": {"imagesize": 128}}}])
def test_a_typo_key_in_a_setting_is_rejected(tmp_path, typo):
    setting = tmp_path / "typo.yaml"
    setting.write_text(yaml.safe_dump(typo))
    with pytest.raises(SystemExit):
        _parse((EXPERIMENTS / "saca_unet" / "busi.yaml", setting))


def test_linked_values_follow_their_source():
    busi = EXPERIMENTS / "saca_unet" / "busi.yaml"
    config = _parser().parse_args(["fit", "--config", str(busi), "--data.image_size", "128", "--trainer.max_epochs", "7",
                                   "--model.num_classes", "2"])["fit"]
    network = config.model.init_args.network.init_args
    assert (network.img_size, network.num_classes) == (128, 2)
    assert config.model.init_args.lr_scheduler.init_args.T_max == 7  # the cosine spans the run
    esc50 = _parse((EXPERIMENTS / "asda" / "finetune_esc50.yaml",))["fit"].model.init_args.network.init_args
    assert esc50.num_classes == 50 and esc50.frontend.init_args.sample_rate == 16000
    assert esc50.encoder.init_args.target_length == esc50.frontend.init_args.target_length == 512
    assert esc50.encoder.init_args.num_mel_bins == esc50.frontend.init_args.num_mel_bins == 128


def test_audio_links_follow_the_data():
    chandna = _parser().parse_args(["fit", "--config", str(EXPERIMENTS / "chandna" / "dsd100.yaml"), "--data.n_fft", "2048",
                                    "--data.chunk_frames", "20"])["fit"].model.init_args
    assert (chandna.n_fft, chandna.hop_length, chandna.chunk_stride) == (2048, 256, 5)
    assert (chandna.network.init_args.num_bins, chandna.network.init_args.time_context) == (1025, 20)
    dcca = _parse((EXPERIMENTS / "dcca" / "avec2013.yaml",))["fit"]
    assert dcca.model.init_args.network.init_args.segment_samples == 24000  # 8 kHz x 3 s


def test_links_skip_classes_without_the_argument():
    unet = _parse((EXPERIMENTS / "saca_unet" / "busi.yaml", EXPERIMENTS / "saca_unet" / "busi" / "unet.yaml"))["fit"]
    assert "img_size" not in unet.model.init_args.network.init_args  # UNet takes no img_size: not added
    fnoreg = _parse((EXPERIMENTS / "fnoreg" / "oasis2d.yaml",))["fit"]
    assert "T_max" not in (fnoreg.model.init_args.lr_scheduler or {}).get("init_args", {})


def test_schedule_length_is_the_run_in_the_schedulers_unit():
    assert run.schedule_length(200, -1, "epoch") == 200
    assert run.schedule_length(None, 5000, "step") == 5000
    assert run.schedule_length(None, -1, "epoch") is None  # no length given: CosineAnnealingLR fails to build


@pytest.mark.parametrize("files", [f for f in SETTINGS if "_noise_" in f[1].stem or f[1].stem.startswith("noise_")],
                         ids=lambda f: _id(f))
def test_a_noise_setting_tests_the_noise_it_is_named_after(files):
    noise = files[1].stem.rsplit("noise_", 1)[1]
    assert _resolved(tuple(files))["data"]["init_args"]["test_noise"] == {"sp": "s&p"}.get(noise, noise)


STUDIES = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if run.is_study(p))


@pytest.mark.parametrize("path", STUDIES, ids=[p.relative_to(EXPERIMENTS).as_posix() for p in STUDIES])
def test_every_study_expands_and_its_runs_parse(path, tmp_path, monkeypatch):
    """Each run of a study file, placeholders filled (checkpoints by the paths they will have), parses."""
    import study

    monkeypatch.setattr(study, "checkpoint_of", lambda r: r.run_dir / "checkpoints" / "best.ckpt")
    runs = study.expand_runs(study.load_study(path), tmp_path)
    done, groups = {}, {}
    for entry in runs:
        argv = study.command(entry, done, tmp_path, str(tmp_path), "study/id")[2:]
        if argv[0] in run.SUBCOMMANDS:
            argv = argv[1:]
        for config in argv[1::2][:len(entry.configs)]:
            assert Path(config).is_file() or (ROOT / config).is_file(), f"{entry.name}: {config} not found"
        args = [a if not a.startswith("experiments/") else str(ROOT / a) for a in argv]
        groups.setdefault(_flag_signature(args), []).append(args)
        done[entry.name] = entry
    # Runs that differ only in the values a repeat gives (subject 1..32, seed 0..9) parse alike: parse the first
    # and the last of each group (a study of 256 runs costs seconds, not minutes); every distinct composition
    # and flag set is parsed.
    for members in groups.values():
        for args in {id(a): a for a in (members[0], members[-1])}.values():
            _parser().parse_args(["fit", *args])


def _flag_signature(args: list[str]) -> tuple:
    """The config files and flag names of a run.py argument list, without the flags' values."""
    signature, i = [], 0
    while i < len(args):
        token = args[i]
        if token == "--config":
            signature.append(("config", args[i + 1]))
            i += 2
            continue
        if token.startswith("--"):
            signature.append(token.split("=", 1)[0])
            if "=" not in token and i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
        i += 1
    return tuple(signature)
