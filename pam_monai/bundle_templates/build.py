"""Write the MONAI bundles in ``bundles/`` from the templates beside this file.

Every bundle shares the same workflow; only its task (data set, Table 2 settings) and network
differ. The workflow is written ONCE here (``train.json``, ``evaluate.json``, ``inference.json``,
``multi_gpu_train.json``, ``logging.conf``) and rendered into each bundle, so that each bundle
stays self-contained for the MONAI model zoo while nothing is copied by hand. A test fails when
a committed bundle differs from what this writes.

    python -m pam_monai.bundle_templates.build            # (re)write bundles/
    python -m pam_monai.bundle_templates.build --check    # exit 1 if bundles/ is out of date
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_text
from ..data import DATASETS, DatasetSpec

HERE = Path(__file__).parent
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
NETWORKS = {
    "fpa": "False Positive Attention (FPA)",
    "rfna": "Reverse False Negative Attention (RFNA)",
}
TASKS = {
    "brats": {
        "modality": "MR",
        "target": "enhancing tumour (label 4)",
        "data_source": "BraTS 2018 training set, HGG cases (https://www.med.upenn.edu/sbia/brats2018/data.html)",
        "data_type": "nibabel",
        "channel_def": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},
        "format": "magnitude",
        "data_terms": "BraTS: the challenge's data usage terms",
        "data_citation": "Cite, as the BraTS terms ask: Menze et al., The Multimodal Brain Tumor Image Segmentation "
        "Benchmark (BRATS), IEEE TMI 34(10), 2015, doi:10.1109/TMI.2014.2377694; Bakas et al., Advancing The "
        "Cancer Genome Atlas glioma MRI collections with expert segmentation labels and radiomic features, "
        "Scientific Data 4:170117, 2017, doi:10.1038/sdata.2017.117.",
    },
    "isles": {
        "modality": "CT",
        "target": "ischaemic stroke lesion",
        "data_source": "ISLES 2018 training set (https://www.isles-challenge.org/ISLES2018/)",
        "data_type": "nibabel",
        "channel_def": {"0": "CBF", "1": "MTT", "2": "CBV", "3": "Tmax"},
        "format": "magnitude",
        "data_terms": "ISLES: the challenge's terms",
        "data_citation": "Cite the publications the ISLES 2018 page asks for.",
    },
    "cityscapes": {
        "modality": "RGB",
        "target": "vehicles (labelIds 26-33)",
        "data_source": "CityScapes leftImg8bit and gtFine (https://www.cityscapes-dataset.com/)",
        "data_type": "png",
        "channel_def": {"0": "R", "1": "G", "2": "B"},
        "format": "RGB",
        "data_terms": "CityScapes: non-commercial, no redistribution",
        "data_citation": "Cite: Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, "
        "CVPR 2016.",
    },
}
SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: the MD5 of that schema file, for ``verify_metadata --hash_val`` on a copy fetched once
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
# metadata's intended_use, also stated in each README (the model zoo's READMEs carry a disclaimer)
INTENDED_USE = "Research only: not for clinical use."
PAPER = (
    "Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob. Learning To Pay Attention To Mistakes. "
    "BMVC 2020. https://arxiv.org/abs/2007.15131"
)


# wall time of `python -m monai.bundle run training --config_file <bundle>/configs/train.json --epochs 1`
# on a fresh clone without data (synthetic stand-in), measured; bundles not listed were not timed
MEASURED = {
    "brats_fpa": "37 s on 2 CPU cores (AMD EPYC, torch 2.13 CPU, 2026-11-26): synthetic stand-in "
    "generated, one epoch of the full-size FPA at batch 50 (26 s), validation on one whole case, "
    "checkpoint written",
}


def channel_count(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"


def bundle_names() -> list[str]:
    return [f"{task}_{net}" for task in TASKS for net in NETWORKS]


@dataclass(frozen=True)
class BundleTask:
    """What a bundle is about: ``task`` (the configs' data set name), its spec, the model-zoo
    facts of ``TASKS``, the bundle name's prefix and where it lives relative to the working folder;
    ``commands_from_bundle``: the README's commands are written to run from the bundle's own folder
    (a bundle shared alone, as in the model zoo), else from the working folder above ``folder``."""

    task: str
    spec: DatasetSpec
    info: dict
    prefix: str
    folder: str = "bundles"
    dataset_dir: str = "$os.path.join(@bundle_root, 'data')"
    commands_from_bundle: bool = True


def as_task(task: str | BundleTask) -> BundleTask:
    return task if isinstance(task, BundleTask) else BundleTask(task, DATASETS[task], TASKS[task], task)


def variables(task: str | BundleTask, network: str) -> dict:
    bt = as_task(task)
    spec = bt.spec
    name = f"{bt.prefix}_{network}"
    where = f"{bt.folder}/{name}"
    return {
        # the repository's layout when run from its root (the documented commands), else the
        # current folder: a downloaded bundle runs from its own folder (or pass --bundle_root)
        "bundle_root": f"$pam_monai.engines.bundle_root('{where}')",
        "task": bt.task,
        "network_name": network,
        "bundle_name": name,
        "dataset_dir": bt.dataset_dir,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "learning_rate": spec.lr,
        "in_channels": spec.in_channels,
    }


def render(template, values: dict):
    """Replace every string ``"@@key"`` in a JSON template by ``values[key]`` (keeping its type)."""
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if isinstance(template, str) and template.startswith("@@"):
        return values[template[2:]]
    return template


def _preprocessing(spec: DatasetSpec) -> str:
    """The image preprocessing in words, for ``image_classes``."""
    geometry = (
        "zero-padded (larger slices: sliding windows) in-plane"
        if spec.volumetric and spec.inference_fit == "pad"
        else "centre-cropped"
        if spec.volumetric
        else "resized"
    )
    if not spec.normalization:  # the paper's data sets
        return (
            f"z-scored over non-zero voxels, {geometry}"
            if spec.volumetric
            else f"scaled to [0, 1], {geometry}"
        )
    return f"{normalisation_words(spec)}; {geometry}"


def _input_value_range(spec: DatasetSpec) -> list[int]:
    """metadata's input ``value_range``: [0, 1] where every channel is scaled to it (CityScapes' RGB,
    own channels named ``rgb_to_0_1`` / ``rescale_to_0_1``), else [] (z-scores and CT: unbounded)."""
    if not spec.normalization:  # the paper's data sets, as _preprocessing says
        return [] if spec.volumetric else [0, 1]
    return [0, 1] if all(n.scheme in ("rgb_to_0_1", "rescale_to_0_1") for n in spec.normalization) else []


def normalisation_words(spec: DatasetSpec) -> str:
    """Own data's normalisation of each channel, in words (one phrase when all channels share it)."""
    words = [n.describe() for n in spec.channel_norms]
    if len(set(words)) == 1:
        return f"each channel: {words[0]}"
    # a channel named "CT" reads "CT: clip ...", not "CT: CT: clip ..." (the phrase names its scheme)
    return "; ".join(
        w if w.casefold().startswith(f"{name}: ".casefold()) else f"{name}: {w}"
        for name, w in zip(spec.channels, words)
    )


def _first_release(bt: BundleTask, network: str) -> str:
    """The changelog's first entry: the repository's bundles are pam-monai's own release; a bundle
    made by ``python -m pam_monai bundle`` is the user's, of their data set."""
    from .. import __version__

    if bt.task in TASKS:
        return "first release of the pam-monai bundles"
    return f"first version: {network} on {bt.info['data_source']}, written by pam-monai {__version__}"


def metadata(task: str | BundleTask, network: str) -> dict:
    import monai
    import numpy
    import torch

    from .. import __version__

    bt = as_task(task)
    spec, info = bt.spec, bt.info
    h, w = spec.spatial_size
    return {
        "schema": SCHEMA,
        "version": __version__,
        "changelog": {__version__: _first_release(bt, network)},
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {
            "pam-monai": __version__,
            # the versions the bundles are tested with, of every dependency the workflows import
            "nibabel": "5.4.2",
            "pytorch-ignite": "0.5.5",
            "scipy": "1.17.1",  # HD95's surface distances
            "tqdm": "4.70.1",  # progress bars
            **({"pillow": "13.0.0"} if info["data_type"] == "png" else {}),  # PNGs read and written
            **({"SimpleITK": "2.5.7"} if spec.file_ending.lower() in (".mha", ".nrrd") else {}),
            "tensorboard": "2.21.0",
        },
        "supported_apps": {},
        "name": f"{spec.title} {network.upper()}",
        "task": f"2D binary segmentation of the {info['target']} ({spec.title})",
        "description": (
            f"{NETWORKS[network]} U-Net of 'Learning To Pay Attention To Mistakes' (BMVC 2020) trained on "
            f"{spec.title} {'axial slices' if spec.volumetric else 'images'}; every baseline of the paper runs from this bundle with --network_name."
        ),
        "authors": "pam-monai contributors",
        "copyright": "Copyright (c) pam-monai contributors",
        "data_source": info["data_source"],
        "data_type": info["data_type"],
        "image_classes": f"{channel_count(spec.in_channels)} ({', '.join(info['channel_def'].values())}), "
        f"{_preprocessing(spec)} to {h}x{w}",
        "label_classes": f"single channel: 1 = {info['target']}, 0 = everything else",
        "pred_classes": f"single channel logit of the {info['target']} (foreground polarity, also for RFNA)",
        "eval_metrics": {"val_iou": "per-case foreground IoU on the validation split"},
        "intended_use": INTENDED_USE,
        "references": [PAPER],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": info["format"],
                    "modality": info["modality"],
                    "num_channels": spec.in_channels,
                    "spatial_shape": [h, w],
                    "dtype": "float32",
                    "value_range": _input_value_range(spec),
                    # volumes: an in-plane crop (sliding window) at the data's resolution, not the
                    # whole slice resized; 2-D images are resized whole
                    "is_patch_data": spec.volumetric,
                    "channel_def": info["channel_def"],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 1,
                    "spatial_shape": [h, w],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": spec.volumetric,
                    "channel_def": {"0": f"{info['target']} logit"},
                }
            },
        },
    }


def bundle_files(task: str | BundleTask, network: str) -> dict[str, str]:
    """Relative path -> text of every file of one bundle."""
    values = variables(task, network)
    files = {}
    for name in CONFIGS:
        template = json.loads((HERE / name).read_text(encoding="utf-8"))
        files[f"configs/{name}"] = json.dumps(render(template, values), indent=4) + "\n"
    files["configs/metadata.json"] = json.dumps(metadata(task, network), indent=4) + "\n"
    files["configs/logging.conf"] = (HERE / "logging.conf").read_text(encoding="utf-8")
    files["docs/README.md"] = (
        (HERE / "README.md.in").read_text(encoding="utf-8").format(**_doc_values(task, network))
    )
    # weights inherit the terms of the data they are trained on: each bundle names its own data's
    files["LICENSE"] = (
        (HERE / "LICENSE.in").read_text(encoding="utf-8").format(data_terms=as_task(task).info["data_terms"])
    )
    files["docs/data_license.txt"] = _data_licence(as_task(task).info)
    return files


def _data_licence(info: dict) -> str:
    """``docs/data_license.txt``: the model zoo's file for the terms of the data a bundle is trained on."""
    text = (
        (HERE / "data_license.txt.in")
        .read_text(encoding="utf-8")
        .format(
            data_source=info["data_source"],
            data_terms=info["data_terms"],
            data_citation=info.get("data_citation", ""),
        )
    )
    return text.rstrip("\n") + "\n"


PAPER_GENERATED = (
    "This bundle is generated from `pam_monai/bundle_templates/` (run\n"
    "`python -m pam_monai.bundle_templates.build`): edit the templates, not these files."
)
PAPER_RUN_FROM = """Run the commands below from the bundle's own folder (in a clone of the
project: `cd bundles/{name}`); from anywhere else, MONAI's workflows (`python -m monai.bundle run`,
`monai.bundle.run` / `load` in Python) write `models/`, `eval/` and `cache/` into the bundle whose
`configs/` they run (`--bundle_root` sets another folder). A bundle in a shared, read-only folder evaluates and infers with `--output_dir DIR`
(`models/` is only read); an output folder that cannot be written (`--output_dir`, training's
`--ckpt_dir`) is refused before any work, naming it and its flag."""
PAPER_DATA = """Point `dataset_dir` at the folder of the published layout,
`{layout}`
(more in the project README). Without
`--dataset_dir` (and no `data/` in the bundle), training runs on a small **synthetic stand-in**
generated on the fly (into `synthetic_data/`) and the log says so; a `--dataset_dir` that does not
exist or is empty is an error (a typo, a disk not mounted), and a folder with other content (data in another layout) is
an error that names the expected layout, and so is a `data_list_file_path` that does not exist or
a training set without any foreground voxel (a label convention that does not match). Split: {split}. Every case is checked before training
(`python -m pam_monai check --dataset {task} --root DIR` prints the same report).

**Own data**: this bundle also trains, evaluates and infers on a data set in the nnU-Net v2 raw
layout (`dataset.json`, `imagesTr/<case>_0000.nii.gz`, ..., `labelsTr/<case>.nii.gz`, or `.mha` /
`.nrrd` volumes, or 2-D `.png` / `.bmp` / `.tif` images; any channel count and integer labels) with
`--task nnunet --dataset_dir DIR`, plus `--foreground_label` (values or label names; default every
non-zero label) and `--crop_size "[h, w]"` (volumes: the in-plane crop, default the largest training
image rounded up to 16; 2-D images: the size they are resized to, default their median size with the
longer side at most 256, rounded up to 16). Channels are normalised as their names say (`CT` with the training
foreground's statistics). Channels, crop, target and CT statistics are recorded in
`models/model.json` and checked by evaluation and inference. `python -m pam_monai bundle --dataset_dir DIR --network {network_name} --output NAME_{network_name}`
makes a bundle of its own for such a data set (its configs carry channels, labels, crop and target).
See the project README, "Your own data"."""


def _masks(bt: BundleTask) -> str:
    """The files inference writes, as :meth:`pam_monai.engines.CasePredictor.output_path` names them."""
    if bt.spec.volumetric:
        return (
            "each case's mask is `<case>_seg.nii.gz` (`.mha` / `.nrrd` for such inputs), uint8, 1 = "
            f"{bt.info['target']}, 0 elsewhere"
        )
    if bt.spec.name == "nnunet":
        return f"each image's mask is `<case>_seg.png`, uint8, 1 = {bt.info['target']}, 0 elsewhere"
    return f"each frame's mask is `<frame>_vehicles.png`, uint8, 255 = {bt.info['target']}, 0 elsewhere"


def _cases(bt: BundleTask) -> str:
    """Which cases under ``--input_dir`` inference segments, as :func:`pam_monai.engines.find_inference_cases`
    finds them (not training's selection: every BraTS grade, every CityScapes split)."""
    return {
        "brats": "every case there is segmented, of every grade (`HGG/` and `LGG/`)",
        "cityscapes": "every frame there is segmented, of every split (`train`, `val` and `test`)",
        "isles": (
            "every case there is segmented: `TESTING/`'s when it is there alone; beside `TRAINING/`, whose "
            "`case_<n>` share its names, `TRAINING/`'s, with a WARNING naming `--input_dir <root>/TESTING`"
        ),
    }.get(bt.spec.name, "a data set's root means its `imagesTs/` (`imagesTr/` when it has none)")


# each network's size against the paper's (REFERENCE.md sections 3 and 4; README.md)
SIZE_NOTES = {
    "fpa": " (the paper's 4.2M is 4,231,584 at 4)",
    "rfna": ", not the paper's 5.63M: RFNA is built as the paper's Figure 3 draws it, whose full 3x3 "
    "`W_r4` alone outgrows the paper's attention budget (the project README, \"RFNA's parameter "
    'count"); `--network_options "{\'expansion\': 1}"` builds a smaller one (4,660,256 at 4)',
}


def network_size(network: str, in_channels: int) -> str:
    """The sentence giving the bundle network's parameter count, against the paper's."""
    from ..networks import get_network

    net = get_network(network, spatial_dims=2, in_channels=in_channels, out_channels=1)
    count = sum(p.numel() for p in net.parameters())
    return f"Network size: {count:,} parameters at {in_channels} input channels{SIZE_NOTES[network]}."


BRATS_VALIDATION_MEMORY = (
    "~88 MB per full-size BraTS case (float32 4 x 160 x 160 x 155 image\nand label, and the 240 x 240 x 155 "
    "label), ~3.7 GB for the 42 of a BraTS 2018 HGG fold, ~5 GB for the 57 of all 285\ncases (measured on the "
    "real BraTS samples)"
)


def _validation_memory(spec) -> str:
    """What the validation cases held in memory cost: measured for BRATS; for the other data sets
    (ISLES, CityScapes, own data: no BraTS figures in their READMEs) the float32 size per slice."""
    if spec.name == "brats":
        return BRATS_VALIDATION_MEMORY
    h, w = spec.spatial_size
    per_slice = 4 * (spec.in_channels + 1) * h * w
    unit = "slice" if spec.volumetric else "image"
    size = f"float32 {spec.in_channels} x {h} x {w} image and label per {unit}, {per_slice / 1e6:.2f} MB"
    if spec.name == "cityscapes":  # scored on the network's grid: CaseDataset keeps no full-size label
        return size + " (scored on that grid)"
    return size + ", plus each\ncase's label at its original size"


#: what a bundle's runs leave in its folder for themselves, and the data set a user may put in
#: ``data/``: not shipped (the zoo's zip holds configs, docs, LICENSE and the weights with their record)
NOT_SHIPPED = (
    "cache/*",
    "eval/*",
    "synthetic_data/*",
    "predictions/*",
    "data/*",
    "models/checkpoint_last.pt",
    "models/*.partial",
)


def _zip_excludes(name: str) -> str:
    """``zip -x`` patterns, quoted for the shell, that leave :data:`NOT_SHIPPED` out of ``name``'s zip."""
    return " ".join(shlex.quote(f"{name}/{pattern}") for pattern in NOT_SHIPPED)


def _layout(bt: BundleTask) -> str:
    """The folder layout the paper data set's reader expects (own data: none, their README says)."""
    import importlib

    try:
        return importlib.import_module(f"pam_monai.data.{bt.task}").LAYOUT
    except (ImportError, AttributeError):
        return ""


def _doc_values(task: str | BundleTask, network: str) -> dict:
    bt = as_task(task)
    spec = bt.spec
    h, w = spec.spatial_size
    name = f"{bt.prefix}_{network}"
    values = {
        "name": name,
        # the commands' path to the bundle's files: none from its own folder; from the folder above
        # it, a bare command-line argument is quoted when a folder name has a space (own bundles)
        "where": "" if bt.commands_from_bundle else f"{bt.folder}/{name}/",
        "where_arg": "" if bt.commands_from_bundle else shlex.quote(f"{bt.folder}/{name}") + "/",
        # the zip is made from the folder above the bundle, so that it holds the bundle's folder
        "parent_arg": ".." if bt.commands_from_bundle else shlex.quote(bt.folder),
        "name_arg": shlex.quote(name),
        # a recipient's unzipped folder is the bundle itself: commands written from above it name it
        "recipient_paths": ""
        if bt.commands_from_bundle
        else f" with `{bt.folder}/{name}/` left out of their paths",
        "zip_excludes": _zip_excludes(name),
        "schema_file": SCHEMA.rsplit("/", 1)[1],
        "schema_md5": SCHEMA_MD5,
        "title": spec.title,
        "network": NETWORKS[network],
        "network_name": network,
        "task": bt.task,
        "target": bt.info["target"],
        "channels": ", ".join(bt.info["channel_def"].values()),
        "channel_count": channel_count(spec.in_channels),
        "shape": f"{spec.in_channels}x{h}x{w}",
        "preprocessing": _preprocessing(spec),
        "shape_nchw": f"{spec.in_channels} x {h} x {w}",
        "hw": f"{h} x {w}",
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "split": spec.split,
        "paper": PAPER,
        "intended_use": INTENDED_USE,
        "data_terms": bt.info["data_terms"],
        "measured": MEASURED.get(
            name,
            "not timed at full size; the test suite runs this bundle's training, evaluation and inference "
            "with a narrow network on every commit",
        ),
        "defaults": "paper Table 2 defaults",
        "data_flag": " \\\n    --dataset_dir /path/to/data",
        "fg_note": " (BraTS 2021+: 3)" if spec.name == "brats" else "",
        "run_from": PAPER_RUN_FROM,
        "layout": _layout(bt),
        "masks": _masks(bt),
        "network_size": network_size(network, spec.in_channels),
        "cases": _cases(bt),
        "validation_memory": _validation_memory(spec),
        # timed on the real BraTS samples only: the other data sets say what the check costs
        "check_cost": "~0.4 s per full-size BraTS case" if spec.name == "brats" else "one read of every file",
    }
    values["measured_line"] = f"One epoch on a fresh clone without data (`--epochs 1`): {values['measured']}."
    for key in ("defaults", "data_flag", "fg_note", "measured_line"):  # own data bundles say their own
        values[key] = bt.info.get(key, values[key])
    for key, default in (
        ("data_section", PAPER_DATA),
        ("generated", PAPER_GENERATED),
        ("run_from", PAPER_RUN_FROM),
    ):
        values[key] = bt.info.get(key, default).format(**values)
    return values


# metadata records the installed versions: the check compares everything else exactly
_VOLATILE = ("monai_version", "pytorch_version", "numpy_version")


def _comparable(path: str, text: str) -> str:
    if path.endswith("metadata.json"):
        data = json.loads(text)
        for key in _VOLATILE:
            data.pop(key, None)
        return json.dumps(data, sort_keys=True)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="bundles", help="where the bundles go (default: bundles)")
    parser.add_argument(
        "--check", action="store_true", help="report out-of-date files and exit 1, write nothing"
    )
    args = parser.parse_args(argv)
    root = Path(args.root)
    stale = []
    for task in TASKS:
        for network in NETWORKS:
            for rel, text in bundle_files(task, network).items():
                path = root / f"{task}_{network}" / rel
                current = path.read_text(encoding="utf-8") if path.is_file() else None
                if current is not None and _comparable(rel, current) == _comparable(rel, text):
                    continue
                stale.append(path)
                if not args.check:  # atomically: a build stopped half-way leaves no cut config
                    atomic_write_text(path, text)
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run python -m pam_monai.bundle_templates.build)")
        return 1 if stale else 0
    print(f"wrote {len(stale)} files under {root}/" if stale else f"{root}/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
