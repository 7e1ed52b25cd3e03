"""Checks that every experiment YAML of the old flat layout resolves, through run.py's CLI parser, to the
same config as its composition in the new layout (base + setting), and maps old names to new paths.

    python -m tests.config_migration f844ea8     # any commit that still has the flat files

The flat files are read from that commit with git, so the check can be re-run after they were deleted.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# old flat file (experiments/<old>.yaml) -> new path relative to experiments/, without .yaml; a path with
# two parts is a base (paper/dataset), with three a setting layered on the base named by its first two.
OLD_TO_NEW = {
    "asda_finetune_as20k": "asda/finetune_as20k",
    "asda_finetune_as20k_alpha1": "asda/finetune_as20k/alpha1",
    "asda_finetune_as20k_alpha2": "asda/finetune_as20k/alpha2",
    "asda_finetune_as20k_cls_middle": "asda/finetune_as20k/cls_middle",
    "asda_finetune_as20k_lambda0": "asda/finetune_as20k/lambda0",
    "asda_finetune_as20k_lambda0.1": "asda/finetune_as20k/lambda0.1",
    "asda_finetune_as20k_lambda0.5": "asda/finetune_as20k/lambda0.5",
    "asda_finetune_as20k_meanpool": "asda/finetune_as20k/meanpool",
    "asda_finetune_as2m": "asda/finetune_as2m",
    "asda_finetune_esc50": "asda/finetune_esc50",
    "asda_finetune_esc50_alpha1": "asda/finetune_esc50/alpha1",
    "asda_finetune_esc50_alpha2": "asda/finetune_esc50/alpha2",
    "asda_finetune_esc50_cls_middle": "asda/finetune_esc50/cls_middle",
    "asda_finetune_esc50_meanpool": "asda/finetune_esc50/meanpool",
    "asda_finetune_spc2": "asda/finetune_spc2",
    "asda_finetune_spc2_alpha1": "asda/finetune_spc2/alpha1",
    "asda_finetune_spc2_alpha2": "asda/finetune_spc2/alpha2",
    "asda_finetune_spc2_cls_middle": "asda/finetune_spc2/cls_middle",
    "asda_finetune_spc2_meanpool": "asda/finetune_spc2/meanpool",
    "asda_pretrain_as2m": "asda/pretrain_as2m",
    "asda_pretrain_as2m_alpha1": "asda/pretrain_as2m/alpha1",
    "asda_pretrain_as2m_alpha2": "asda/pretrain_as2m/alpha2",
    "asda_pretrain_as2m_cls_middle": "asda/pretrain_as2m/cls_middle",
    "asda_pretrain_as2m_lambda0": "asda/pretrain_as2m/lambda0",
    "asda_pretrain_as2m_lambda0.1": "asda/pretrain_as2m/lambda0.1",
    "asda_pretrain_as2m_lambda0.5": "asda/pretrain_as2m/lambda0.5",
    "attention_unet_busi": "saca_unet/busi/attention_unet",
    "attention_unet_covid19": "saca_unet/covid19/attention_unet",
    "attention_unet_cvc_clinicdb": "saca_unet/cvc_clinicdb/attention_unet",
    "attention_unet_isic2018": "saca_unet/isic2018/attention_unet",
    "chandna_dsd100": "chandna/dsd100",
    "chandna_dsd100_code": "chandna/dsd100/code",
    "chandna_dsd100_mixture": "chandna/dsd100/mixture",
    "chandna_dsd100_oracle_irm": "chandna/dsd100/oracle_irm",
    "chandna_report_exp4": "chandna/dsd100/report_exp4",
    "dcca_avec2013": "dcca/avec2013",
    "dcca_avec2013_c2db": "dcca/avec2013/c2db",
    "dcca_avec2013_ca": "dcca/avec2013/ca",
    "dcca_avec2013_eca": "dcca/avec2013/eca",
    "dcca_avec2014": "dcca/avec2014",
    "dcca_avec2014_c2db": "dcca/avec2014/c2db",
    "dcca_avec2014_ca": "dcca/avec2014/ca",
    "dcca_avec2014_eca": "dcca/avec2014/eca",
    "diffcmr_cgan_cine_acc04": "diffcmr/cine/cgan_acc04",
    "diffcmr_cgan_cine_acc08": "diffcmr/cine/cgan_acc08",
    "diffcmr_cgan_cine_acc10": "diffcmr/cine/cgan_acc10",
    "diffcmr_cgan_mapping_acc04": "diffcmr/mapping/cgan_acc04",
    "diffcmr_cgan_mapping_acc08": "diffcmr/mapping/cgan_acc08",
    "diffcmr_cgan_mapping_acc10": "diffcmr/mapping/cgan_acc10",
    "diffcmr_cine_acc04": "diffcmr/cine",
    "diffcmr_cine_acc04_rounds1": "diffcmr/cine/acc04_rounds1",
    "diffcmr_cine_acc04_rounds2": "diffcmr/cine/acc04_rounds2",
    "diffcmr_cine_acc04_rounds8": "diffcmr/cine/acc04_rounds8",
    "diffcmr_cine_acc04_steps100": "diffcmr/cine/acc04_steps100",
    "diffcmr_cine_acc04_steps20": "diffcmr/cine/acc04_steps20",
    "diffcmr_cine_acc04_steps500": "diffcmr/cine/acc04_steps500",
    "diffcmr_cine_acc08": "diffcmr/cine/acc08",
    "diffcmr_cine_acc10": "diffcmr/cine/acc10",
    "diffcmr_mapping_acc04": "diffcmr/mapping",
    "diffcmr_mapping_acc08": "diffcmr/mapping/acc08",
    "diffcmr_mapping_acc10": "diffcmr/mapping/acc10",
    "diffcmr_unet_cine_acc04": "diffcmr/cine/unet_acc04",
    "diffcmr_unet_cine_acc08": "diffcmr/cine/unet_acc08",
    "diffcmr_unet_cine_acc10": "diffcmr/cine/unet_acc10",
    "diffcmr_unet_mapping_acc04": "diffcmr/mapping/unet_acc04",
    "diffcmr_unet_mapping_acc08": "diffcmr/mapping/unet_acc08",
    "diffcmr_unet_mapping_acc10": "diffcmr/mapping/unet_acc10",
    "fno_oasis2d_large": "fnoreg/oasis2d/fno_large",
    "fno_oasis2d_large_half": "fnoreg/oasis2d/fno_large_half",
    "fno_oasis2d_medium": "fnoreg/oasis2d/fno_medium",
    "fno_oasis2d_medium_half": "fnoreg/oasis2d/fno_medium_half",
    "fno_oasis2d_small": "fnoreg/oasis2d/fno_small",
    "fno_oasis2d_small_half": "fnoreg/oasis2d/fno_small_half",
    "fnoreg_oasis": "fnoreg/oasis2d",
    "fnoreg_oasis2d_large": "fnoreg/oasis2d",
    "fnoreg_oasis2d_large_half": "fnoreg/oasis2d/large_half",
    "fnoreg_oasis2d_medium": "fnoreg/oasis2d/medium",
    "fnoreg_oasis2d_medium_half": "fnoreg/oasis2d/medium_half",
    "fnoreg_oasis2d_small": "fnoreg/oasis2d/small",
    "fnoreg_oasis2d_small_half": "fnoreg/oasis2d/small_half",
    "fnoreg_oasis3d": "fnoreg/oasis3d",
    "fnoreg_oasis3d_half": "fnoreg/oasis3d/half",
    "fouriernet16_oasis2d": "fnoreg/oasis2d/fouriernet16",
    "fouriernet16_oasis2d_half": "fnoreg/oasis2d/fouriernet16_half",
    "fouriernet16_oasis3d": "fnoreg/oasis3d/fouriernet16",
    "fouriernet16_oasis3d_half": "fnoreg/oasis3d/fouriernet16_half",
    "fouriernet32_oasis2d": "fnoreg/oasis2d/fouriernet32",
    "fouriernet32_oasis2d_half": "fnoreg/oasis2d/fouriernet32_half",
    "fouriernet32_oasis3d": "fnoreg/oasis3d/fouriernet32",
    "fouriernet32_oasis3d_half": "fnoreg/oasis3d/fouriernet32_half",
    "mtunet_busi": "saca_unet/busi/mtunet",
    "mtunet_covid19": "saca_unet/covid19/mtunet",
    "mtunet_cvc_clinicdb": "saca_unet/cvc_clinicdb/mtunet",
    "mtunet_isic2018": "saca_unet/isic2018/mtunet",
    "saca_unet_busi": "saca_unet/busi",
    "saca_unet_busi_aspp": "saca_unet/busi/aspp",
    "saca_unet_busi_global_only": "saca_unet/busi/global_only",
    "saca_unet_busi_skips0": "saca_unet/busi/skips0",
    "saca_unet_busi_skips1": "saca_unet/busi/skips1",
    "saca_unet_busi_skips2": "saca_unet/busi/skips2",
    "saca_unet_busi_skips3": "saca_unet/busi/skips3",
    "saca_unet_covid19": "saca_unet/covid19",
    "saca_unet_covid19_aspp": "saca_unet/covid19/aspp",
    "saca_unet_covid19_global_only": "saca_unet/covid19/global_only",
    "saca_unet_cvc_clinicdb": "saca_unet/cvc_clinicdb",
    "saca_unet_cvc_clinicdb_aspp": "saca_unet/cvc_clinicdb/aspp",
    "saca_unet_cvc_clinicdb_global_only": "saca_unet/cvc_clinicdb/global_only",
    "saca_unet_cvc_clinicdb_skips0": "saca_unet/cvc_clinicdb/skips0",
    "saca_unet_cvc_clinicdb_skips1": "saca_unet/cvc_clinicdb/skips1",
    "saca_unet_cvc_clinicdb_skips2": "saca_unet/cvc_clinicdb/skips2",
    "saca_unet_cvc_clinicdb_skips3": "saca_unet/cvc_clinicdb/skips3",
    "saca_unet_isic2018": "saca_unet/isic2018",
    "saca_unet_isic2018_aspp": "saca_unet/isic2018/aspp",
    "saca_unet_isic2018_global_only": "saca_unet/isic2018/global_only",
    "sfrseg_net_ra_usg": "sfrseg_net/ra_usg",
    "sfrseg_net_ra_usg_e150": "sfrseg_net/ra_usg/e150",
    "sfrseg_net_ra_usg_e200": "sfrseg_net/ra_usg/e200",
    "sfrseg_net_ra_usg_e250": "sfrseg_net/ra_usg/e250",
    "sfrseg_net_ra_usg_e300": "sfrseg_net/ra_usg/e300",
    "sfrseg_net_ra_usg_e50": "sfrseg_net/ra_usg/e50",
    "sfrseg_net_ra_usg_noise_gaussian": "sfrseg_net/ra_usg/noise_gaussian",
    "sfrseg_net_ra_usg_noise_poisson": "sfrseg_net/ra_usg/noise_poisson",
    "sfrseg_net_ra_usg_noise_sp": "sfrseg_net/ra_usg/noise_sp",
    "sfrseg_net_ra_usg_noise_speckle": "sfrseg_net/ra_usg/noise_speckle",
    "sfrseg_net_ra_usg_pool_avg": "sfrseg_net/ra_usg/pool_avg",
    "sfrseg_net_ra_usg_pool_global_avg": "sfrseg_net/ra_usg/pool_global_avg",
    "sfrseg_net_ra_usg_pool_global_max": "sfrseg_net/ra_usg/pool_global_max",
    "sfrseg_net_ra_usg_pool_max": "sfrseg_net/ra_usg/pool_max",
    "sfrseg_net_ra_usg_pool_max_noise_gaussian": "sfrseg_net/ra_usg/pool_max_noise_gaussian",
    "sfrseg_net_ra_usg_pool_max_noise_poisson": "sfrseg_net/ra_usg/pool_max_noise_poisson",
    "sfrseg_net_ra_usg_pool_max_noise_sp": "sfrseg_net/ra_usg/pool_max_noise_sp",
    "sfrseg_net_ra_usg_pool_max_noise_speckle": "sfrseg_net/ra_usg/pool_max_noise_speckle",
    "sfrseg_net_ra_usg_pool_mixed": "sfrseg_net/ra_usg/pool_mixed",
    "sfrseg_net_ra_usg_pool_polynomial": "sfrseg_net/ra_usg/pool_polynomial",
    "sfrseg_net_ra_usg_pool_second_order": "sfrseg_net/ra_usg/pool_second_order",
    "sfrseg_net_ra_usg_pool_stochastic": "sfrseg_net/ra_usg/pool_stochastic",
    "sfrseg_net_ra_usg_segnet": "sfrseg_net/ra_usg/segnet",
    "sfrseg_net_ra_usg_segnet_noise_gaussian": "sfrseg_net/ra_usg/segnet_noise_gaussian",
    "sfrseg_net_ra_usg_segnet_noise_poisson": "sfrseg_net/ra_usg/segnet_noise_poisson",
    "sfrseg_net_ra_usg_segnet_noise_sp": "sfrseg_net/ra_usg/segnet_noise_sp",
    "sfrseg_net_ra_usg_segnet_noise_speckle": "sfrseg_net/ra_usg/segnet_noise_speckle",
    "sfrseg_net_ra_usg_wavelet_souza": "sfrseg_net/ra_usg/wavelet_souza",
    "sfrseg_net_ra_usg_wavelet_zhao": "sfrseg_net/ra_usg/wavelet_zhao",
    "transmorph_oasis2d": "fnoreg/oasis2d/transmorph",
    "transmorph_oasis3d": "fnoreg/oasis3d/transmorph",
    "unet_busi": "saca_unet/busi/unet",
    "unet_covid19": "saca_unet/covid19/unet",
    "unet_cvc_clinicdb": "saca_unet/cvc_clinicdb/unet",
    "unet_gcn_busi": "unet_gcn/busi",
    "unet_gcn_busi_aaunet": "unet_gcn/busi/aaunet",
    "unet_gcn_busi_aaunet_to_stu": "unet_gcn/busi/aaunet_to_stu",
    "unet_gcn_busi_attention_unet": "unet_gcn/busi/attention_unet",
    "unet_gcn_busi_k3": "unet_gcn/busi/k3",
    "unet_gcn_busi_k5": "unet_gcn/busi/k5",
    "unet_gcn_busi_noaug": "unet_gcn/busi/noaug",
    "unet_gcn_busi_nogcn": "unet_gcn/busi/nogcn",
    "unet_gcn_busi_nogcn_to_stu": "unet_gcn/busi/nogcn_to_stu",
    "unet_gcn_busi_posB": "unet_gcn/busi/posB",
    "unet_gcn_busi_posC": "unet_gcn/busi/posC",
    "unet_gcn_busi_segnet": "unet_gcn/busi/segnet",
    "unet_gcn_busi_segnet_to_stu": "unet_gcn/busi/segnet_to_stu",
    "unet_gcn_busi_to_stu": "unet_gcn/busi/to_stu",
    "unet_gcn_busi_unet3plus": "unet_gcn/busi/unet3plus",
    "unet_gcn_busi_unet3plus_to_stu": "unet_gcn/busi/unet3plus_to_stu",
    "unet_gcn_busi_unetpp": "unet_gcn/busi/unetpp",
    "unet_gcn_datasetb": "unet_gcn/datasetb",
    "unet_gcn_datasetb_aaunet": "unet_gcn/datasetb/aaunet",
    "unet_gcn_datasetb_aaunet_to_stu": "unet_gcn/datasetb/aaunet_to_stu",
    "unet_gcn_datasetb_nogcn": "unet_gcn/datasetb/nogcn",
    "unet_gcn_datasetb_segnet": "unet_gcn/datasetb/segnet",
    "unet_gcn_datasetb_segnet_to_stu": "unet_gcn/datasetb/segnet_to_stu",
    "unet_gcn_datasetb_to_stu": "unet_gcn/datasetb/to_stu",
    "unet_gcn_datasetb_unet3plus": "unet_gcn/datasetb/unet3plus",
    "unet_gcn_datasetb_unet3plus_to_stu": "unet_gcn/datasetb/unet3plus_to_stu",
    "unet_isic2018": "saca_unet/isic2018/unet",
    "unext_busi": "saca_unet/busi/unext",
    "unext_covid19": "saca_unet/covid19/unext",
    "unext_cvc_clinicdb": "saca_unet/cvc_clinicdb/unext",
    "unext_isic2018": "saca_unet/isic2018/unext",
    "voxelmorph_oasis2d": "fnoreg/oasis2d/voxelmorph",
    "voxelmorph_oasis2d_half": "fnoreg/oasis2d/voxelmorph_half",
    "voxelmorph_oasis3d": "fnoreg/oasis3d/voxelmorph",
    "voxelmorph_oasis3d_half": "fnoreg/oasis3d/voxelmorph_half",
    "vxm_huge_oasis2d": "fnoreg/oasis2d/vxm_huge",
    "vxm_huge_oasis2d_half": "fnoreg/oasis2d/vxm_huge_half",
    "vxm_huge_oasis3d": "fnoreg/oasis3d/vxm_huge",
    "vxm_huge_oasis3d_half": "fnoreg/oasis3d/vxm_huge_half",
    "vxm_large_oasis2d": "fnoreg/oasis2d/vxm_large",
    "vxm_large_oasis2d_half": "fnoreg/oasis2d/vxm_large_half",
    "vxm_large_oasis3d": "fnoreg/oasis3d/vxm_large",
    "vxm_large_oasis3d_half": "fnoreg/oasis3d/vxm_large_half",
}


# Deliberate changes after the move, which the check reports as such: (old name, key) -> why.
INTENDED_CHANGES = {
    **{(f"sfrseg_net_ra_usg_{net}_noise_{noise}", "data.init_args.test_noise"):
       "the U-Net and SegNet rows of SFRSeg-Net Table 6 tested Gaussian noise whatever their noise column"
       for net in ("pool_max", "segnet") for noise in ("poisson", "sp", "speckle")},
}


def composition(new: str) -> list[str]:
    """The --config files of a new-layout path, base first."""
    parts = new.split("/")
    paths = [f"experiments/{new}.yaml"]
    return [f"experiments/{parts[0]}/{parts[1]}.yaml", *paths] if len(parts) == 3 else paths


def resolved(config_paths: list[str]) -> dict:
    """The fit config as run.py resolves it, flattened to dotted keys (the --config list itself left out)."""
    import run
    args = ["fit"]
    for path in config_paths:
        args += ["--config", path]
    config = run.parse_config(args).config["fit"].clone()
    del config["config"]
    return _flatten(config.as_dict())


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def main(rev: str) -> int:
    warnings.filterwarnings("ignore")
    sys.argv = sys.argv[:1]  # LightningCLI warns when args and sys.argv are both given
    failures, on_purpose = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for old, new in sorted(OLD_TO_NEW.items()):
            flat_file = Path(tmp) / f"{old}.yaml"
            flat_file.write_text(subprocess.run(["git", "show", f"{rev}:experiments/{old}.yaml"], cwd=ROOT,
                                                check=True, capture_output=True, text=True).stdout)
            before, after = resolved([str(flat_file)]), resolved([str(ROOT / p) for p in composition(new)])
            differences = {k: (before.get(k, "<absent>"), after.get(k, "<absent>"))
                           for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>")}
            for key in [k for k in differences if (old, k) in INTENDED_CHANGES]:
                on_purpose += 1
                print(f"changed on purpose {old} -> {new}: {key} {differences.pop(key)}: {INTENDED_CHANGES[old, key]}")
            if differences:
                failures += 1
                print(f"DIFFERS {old} -> {new}: {differences}")
    print(f"{len(OLD_TO_NEW) - failures} of {len(OLD_TO_NEW)} old configs resolve the same in the new layout"
          f" ({on_purpose} values changed on purpose, listed above)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "f844ea8"))
