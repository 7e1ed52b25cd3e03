#!/usr/bin/env python
"""Entry point: LightningCLI over every paper's LightningModule and LightningDataModule.

    python run.py --config experiments/fnoreg_demo.yaml          # fit, then test the best checkpoint
    python run.py fit --config X.yaml --trainer.max_epochs 5      # the usual subcommands also work
    python run.py test --config X.yaml --ckpt_path runs/X/<id>/checkpoints/best.ckpt
    python run.py study --config experiments/<paper>/<x>_study.yaml   # several runs, one table (study.py)

Each run gets one folder, runs/<experiment>/<run id>/, holding the resolved config, checkpoints,
metrics.csv, the W&B run (offline without a key or network), figures/ and results.json. The run id
is --run_id, else SLURM_JOB_ID (so a requeued job finds its checkpoints again), else a time stamp.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from datamodules.base import DatasetError

SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
TRAINER_PRESETS = EXPERIMENTS / "trainer"
RUN_ID_ENV = "PAPERBENCH_RUN_ID"  # inherited by the processes DDP launches, so all ranks share a folder


def wandb_offline() -> bool:
    """Offline unless the user has a key (env or ~/.netrc) and has not forced a mode."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return not has_key


def experiment_name(config_paths: list) -> str:
    """The run folder group of a list of --config files: the last one that is not a trainer preset, as its
    path under experiments/ without .yaml and with "/" -> "_" (experiments/saca_unet/busi/aspp.yaml ->
    saca_unet_busi_aspp); a file outside experiments/ gives its stem."""
    # jsonargparse's Path keeps the directory it was parsed in (.absolute); plain paths are taken as given
    paths = [Path(p.absolute if isinstance(getattr(p, "absolute", None), str) else os.path.abspath(p))
             for p in config_paths]
    paths = [p for p in paths if TRAINER_PRESETS not in p.parents]
    if not paths:
        return "default"
    last = paths[-1]
    if EXPERIMENTS in last.parents:
        return last.relative_to(EXPERIMENTS).with_suffix("").as_posix().replace("/", "_")
    return last.stem


def composition(config: str | os.PathLike) -> list[Path]:
    """The --config files that run one experiment: a setting experiments/<paper>/<dataset>/<setting>.yaml
    layers on its base experiments/<paper>/<dataset>.yaml; a base, a demo or any other file stands alone."""
    path = Path(config).resolve()
    base = path.parent.with_suffix(".yaml")
    if EXPERIMENTS in path.parents and TRAINER_PRESETS not in path.parents and base.is_file():
        return [base, path]
    return [path]


def all_compositions() -> list[list[Path]]:
    """Every runnable composition in experiments/ (trainer presets and study files excluded): each base, each
    base + setting, each stand-alone file (the demos)."""
    files = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if TRAINER_PRESETS not in p.parents and not is_study(p))
    return [composition(p) for p in files]


def is_study(path: Path) -> bool:
    """A study file (``study:`` at the top, run by ``run.py study``), not a run config."""
    with open(path) as file:
        return any(line.startswith("study:") for line in file)


_NETWORK = "model.init_args.network.init_args."
_FRONTEND, _ENCODER = _NETWORK + "frontend.init_args.", _NETWORK + "encoder.init_args."
LINKS = (  # (source, target), see ExperimentCLI.add_arguments_to_parser
    ("data.init_args.image_size", _NETWORK + "img_size"),  # SACA-UNet, UNeXt, MTUNet size tables from it
    ("model.init_args.num_classes", _NETWORK + "num_classes"),  # the task's classes are the network's outputs
    ("data.init_args.sample_rate", _FRONTEND + "sample_rate"),  # ASDA's fbank front end reads the clips' rate
    (_FRONTEND + "target_length", _ENCODER + "target_length"),  # frames the encoder's patch grid is sized for
    (_FRONTEND + "num_mel_bins", _ENCODER + "num_mel_bins"),
    # source separation (Chandna): the task's STFT and chunking are the data's
    ("data.init_args.n_fft", "model.init_args.n_fft"),
    ("data.init_args.hop_length", "model.init_args.hop_length"),
    ("data.init_args.chunk_stride", "model.init_args.chunk_stride"),
    ("data.init_args.chunk_frames", _NETWORK + "time_context"),
)


LINK_TARGETS = (*(target for _, target in LINKS), _NETWORK + "num_bins", _NETWORK + "segment_samples",
                "model.init_args.lr_scheduler.init_args.T_max")


def stft_bins(n_fft: int) -> int:
    """Frequency bins of a one-sided STFT: the input height of a spectrogram network (ChandnaCNN's num_bins)."""
    return n_fft // 2 + 1


def segment_samples(sample_rate: int, segment_seconds: float) -> int:
    """Samples in one clip segment: the input length a waveform network (DCCANet) is built for."""
    return int(round(sample_rate * segment_seconds))


def schedule_length(max_epochs: Optional[int], max_steps: int, scheduler_interval: str) -> Optional[int]:
    """A cosine schedule (T_max) spans the run: trainer.max_epochs, or max_steps when it steps every batch.
    Called for every config (also those without T_max, where the value is dropped), so it never raises;
    None (no length given) makes a CosineAnnealingLR fail when it is built."""
    length = max_steps if scheduler_interval == "step" else max_epochs
    return length if length is not None and length > 0 else None


class _AppendingCSVWriter(ExperimentWriter):
    """Appends to the run folder's metrics.csv: Lightning's writer deletes it, which would erase the history
    of a resumed run or of a requeued SLURM job."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class RunCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume (same run folder): new rows are appended."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingCSVWriter(log_dir=self.log_dir)
        return self._experiment


class ExperimentCLI(LightningCLI):
    def __init__(self, *args: Any, fit_then_test: bool = False, **kwargs: Any):
        self.fit_then_test = fit_then_test
        self.command_line = list(kwargs.get("args") or [])
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a requeued job rewrites the same config
        super().__init__(LightningModule, LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="Run folder group; default: the last --config that is not a trainer preset, "
                                 "as its path under experiments/ with '/' -> '_' (saca_unet_busi_aspp).")
        parser.add_argument("--run_id", type=Optional[str], default=None,
                            help="Run folder name; default: SLURM_JOB_ID, else a time stamp.")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run folders are made.")
        parser.add_argument("--wandb_project", type=str, default="paperbench", help="W&B project.")
        parser.add_argument("--paper", type=Optional[dict], default=None,
                            help="The paper's reference numbers for this setting (documentation only).")
        # Values that data and model (or two parts of a model) share, typed once. Applied at parse time, after
        # every --config and flag; jsonargparse skips a link whose source or target is not an argument of the
        # classes a config chose (a network without img_size, a model without a frontend), so these links are
        # safe for every config. A target given in a config or on the command line is overwritten by its link.
        for source, target in LINKS:
            parser.link_arguments(source, target)
        parser.link_arguments("data.init_args.n_fft", _NETWORK + "num_bins", compute_fn=stft_bins)
        parser.link_arguments(("data.init_args.sample_rate", "data.init_args.segment_seconds"),
                              _NETWORK + "segment_samples", compute_fn=segment_samples)
        parser.link_arguments(("trainer.max_epochs", "trainer.max_steps", "model.init_args.scheduler_interval"),
                              "model.init_args.lr_scheduler.init_args.T_max", compute_fn=schedule_length)

    def _dump_config(self) -> None:
        """Lightning stores this dump as the model's and datamodule's hyperparameters (load_from_checkpoint
        rebuilds from it), but jsonargparse's dump leaves out link targets nested in a subclass's init_args
        (img_size, T_max, ...): put the linked values back, or a reloaded model would lose them."""
        if hasattr(self, "config_dump"):
            return
        super()._dump_config()
        config = self._run_config()
        for target in LINK_TARGETS:
            if target not in config:
                continue
            *parents, leaf = target.split(".")
            node = self.config_dump
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node[leaf] = config[target]

    # -- --ckpt_path ----------------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Lightning rebuilds the model from the checkpoint's hyperparameters, which silently override
        ``--model.*`` flags given on the command line (e.g. a test-time sampling option); those flags win."""
        subcommand = self.config.get("subcommand")
        before = self.config[subcommand].clone() if subcommand else None
        super()._parse_ckpt_path()
        if before is None:
            return
        for key in self._command_line_model_keys():
            candidates = (key, key.replace("model.", "model.init_args.", 1))
            for candidate in candidates:
                if candidate in before:
                    self.config[subcommand][candidate] = before[candidate]
                    break

    def _command_line_model_keys(self) -> list[str]:
        return [token[2:].split("=", 1)[0] for token in self.command_line if token.startswith("--model.")]

    # -- the run folder -----------------------------------------------------------------------------
    def _run_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _resolve_run_dir(self) -> tuple[str, str, str]:
        cfg = self._run_config()
        experiment = cfg.get("experiment")
        if not experiment:
            experiment = experiment_name(cfg.get("config") or [])
        run_id = (cfg.get("run_id") or os.environ.get(RUN_ID_ENV) or os.environ.get("SLURM_JOB_ID")
                  or time.strftime("%Y%m%d-%H%M%S"))
        if os.environ.get("SLURM_ARRAY_TASK_ID") and run_id == os.environ.get("SLURM_JOB_ID"):
            run_id = f"{run_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        os.environ[RUN_ID_ENV] = run_id
        return experiment, run_id, os.path.join(cfg.get("runs_dir") or "runs", experiment, run_id)

    def instantiate_trainer(self, **kwargs: Any):
        experiment, run_id, run_dir = self._resolve_run_dir()
        self.run_dir = run_dir
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        logger = trainer_cfg.get("logger")
        if logger is None or logger is True:
            logger = [
                RunCSVLogger(save_dir=run_dir, name="", version=""),
                WandbLogger(save_dir=run_dir, project=self._run_config().get("wandb_project"),
                            name=f"{experiment}/{run_id}", id=f"{experiment}-{run_id}".replace("/", "-"),
                            offline=wandb_offline(), resume="allow"),
            ]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_checkpointing", True) is not False and not any(
                isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(
                dirpath=os.path.join(run_dir, "checkpoints"), filename="best", save_last=True,
                monitor=getattr(self.model, "monitor", None), mode=getattr(self.model, "monitor_mode", "min")))
        kwargs.update(default_root_dir=run_dir, logger=logger, callbacks=callbacks)
        return super().instantiate_trainer(**kwargs)

    # -- fit, then test -------------------------------------------------------------------------------
    def after_fit(self) -> None:
        if not self.fit_then_test or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        if ckpt_path is None and checkpoint is not None and checkpoint.last_model_path:
            ckpt_path = checkpoint.last_model_path
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        self.after_test()

    def after_test(self) -> None:
        self._write_results()

    @rank_zero_only
    def _write_results(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        results = {"experiment": Path(self.run_dir).parent.name, "run_dir": self.run_dir,
                   "ckpt_path": self.trainer.ckpt_path, "metrics": metrics,
                   "paper": self._run_config().get("paper")}
        results.update(metrics)  # flat keys too: results["test/dice"]
        path = os.path.join(self.run_dir, "results.json")
        os.makedirs(self.run_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=str)
        rank_zero_info(f"Test metrics written to {path}")


class _ParseOnlyCLI(ExperimentCLI):
    """Parses (and validates) a config without building the model, the data or the trainer."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse_config(args: list[str]) -> ExperimentCLI:
    """The CLI after parsing ``args`` (e.g. ``["fit", "--config", X]``), nothing instantiated: ``.config``
    holds the resolved config and ``.parser`` the parser that resolved it (tests, config checks)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return _ParseOnlyCLI(args=args)


def resolved_config(config: str | os.PathLike) -> dict:
    """The resolved fit config (every default filled in) of one experiment file with its base, as a dict."""
    args = ["fit"]
    for path in composition(config):
        args += ["--config", str(path)]
    resolved = parse_config(args).config["fit"].clone()
    del resolved["config"]
    return resolved.as_dict()


def main(argv: Optional[list[str]] = None) -> Optional[ExperimentCLI]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "study":  # several runs and their table: study.py
        import study

        study.main(argv[1:])
        return None
    fit_then_test = not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")
    if fit_then_test:
        argv = ["fit", *argv]
    # sys.argv stays as the user typed it: DDP relaunches this script with it on every rank, and
    # each rank must reach the same decision (fit, then test). LightningCLI warns about args + argv.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    try:
        cli = ExperimentCLI(args=argv, fit_then_test=fit_then_test)
    except DatasetError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        raise SystemExit(2) from None
    _finish_wandb_runs(cli)
    return cli


def _finish_wandb_runs(cli: ExperimentCLI) -> None:
    """Close this run's W&B run: otherwise the next WandbLogger in the same process (a second
    run.main call, a notebook) silently reuses it and logs into the earlier run's folder."""
    trainer = getattr(cli, "trainer", None)
    for logger in (trainer.loggers if trainer is not None else []):
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


if __name__ == "__main__":
    main()
