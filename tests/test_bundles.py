"""Every bundle: generated configs up to date, model-zoo checks, and train -> evaluate -> infer."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import brats_fpa_training, error_chain
from monai.bundle import ConfigParser, run
from monai.engines.utils import IterationEvents

from pam_monai.bundle_templates.build import bundle_names
from pam_monai.bundle_templates.build import main as build_bundles
from pam_monai.data import DATASETS, discover_cases
from pam_monai.engines import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
BUNDLES = bundle_names()
# small and fast on 2 CPU cores; the workflow is the real one
SMALL = {
    "epochs": 1,
    "batch_size": 8,
    "num_workers": 0,
    "network_options": {"features": [8, 16, 32, 64]},
}


# the command-line flags of a small torchrun training (batch 4 per process)
TORCHRUN_SMALL = [
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--network_options",
    json.dumps(SMALL["network_options"]),
]


def import_mlflow():
    """MLflow, or a skip where the ``mlflow`` extra's versions (setup.cfg) are not installed: the
    bundles' database (eval/mlruns.db) and its release on close are MONAI 1.6.1's, and MLflow
    before 3.7 replaced the root logger's handlers when it made a new database."""
    from monai import __version__ as monai_version
    from packaging.version import Version

    if Version(monai_version) < Version("1.6.1"):
        pytest.skip(f"--tracking mlflow needs monai>=1.6.1 (the mlflow extra), found {monai_version}")
    # not pytest.importorskip: it skips on any ImportError, so a CI whose MLflow is installed but
    # broken (a dependency it cannot use) skipped these tests instead of failing them
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("--tracking mlflow needs MLflow (the mlflow extra): not installed")
    import mlflow

    if Version(mlflow.__version__) < Version("3.7"):
        pytest.skip(f"--tracking mlflow needs mlflow>=3.7 (the mlflow extra), found {mlflow.__version__}")
    return mlflow


def configs(name: str, *files: str) -> list[str]:
    return [str(ROOT / "bundles" / name / "configs" / f) for f in files]


def run_bundle(workflow: str, config_file, **overrides) -> None:
    run(workflow, config_file=config_file, logging_file=False, **overrides)


def test_bundles_are_generated_from_the_templates():
    assert build_bundles(["--root", str(ROOT / "bundles"), "--check"]) == 0


def test_a_build_that_fails_half_way_leaves_the_bundle_files_whole(tmp_path, monkeypatch):
    """The build replaces each bundle file atomically: a write that fails (here a text that cannot be
    encoded; a kill or a full disk alike) keeps the previous file, not a truncated config."""
    import pam_monai.bundle_templates.build as build

    assert build_bundles(["--root", str(tmp_path)]) == 0
    train = tmp_path / "brats_fpa" / "configs" / "train.json"
    before = train.read_text(encoding="utf-8")
    real = build.bundle_files

    def unwritable(task, network):
        files = real(task, network)
        return {**files, "configs/train.json": files["configs/train.json"] + "\ud800"}

    monkeypatch.setattr(build, "bundle_files", unwritable)
    with pytest.raises(UnicodeEncodeError):
        build_bundles(["--root", str(tmp_path)])
    assert train.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in train.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout_and_overridable_ids(name):
    root = ROOT / "bundles" / name
    for rel in (
        "configs/metadata.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
    ):
        assert (root / rel).is_file(), rel
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    for key in (
        "bundle_root",
        "dataset_dir",
        "data_list_file_path",
        "ckpt_dir",
        "epochs",
        "batch_size",
        "learning_rate",
        "num_workers",
        "device",
        "network_name",
        "foreground_label",
        "threshold",
        "training",
        "run",
    ):
        assert key in parser, f"{name}: train.json has no '{key}'"
    assert parser.get_parsed_content("validate#postprocessing", instantiate=True).threshold == 0.5
    infer = ConfigParser()
    infer.read_config(str(root / "configs" / "inference.json"))
    assert infer["threshold"] == 0.5 and infer["save_probabilities"] is False
    task, net = name.split("_")
    assert parser["task"] == task and parser["network_name"] == net


def test_bundle_evaluation_records_how_it_scored_and_which_network(tmp_path):
    """A bundle's evaluation wrote eval/summary.json with no record of how it scored, which ``score``
    records (``scored_with``): compare could not check a bundle folder against a score folder. It
    records the same settings (as score's own function makes them), the network and the bundle;
    compare names the folder after the network and heads HD95 in mm (BRATS: volumes). A real, short
    evaluation: weights of a small untrained FPA on the synthetic stand-in."""
    from pam_monai.data import get_spec
    from pam_monai.engines.case_metrics import scored_with
    from pam_monai.experiments.compare_folders import compare, compare_folders
    from pam_monai.networks import get_network

    network = get_network("fpa", in_channels=4, out_channels=1, options=SMALL["network_options"])
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), "num_workers": 0}
    files = configs("brats_fpa", "train.json", "evaluate.json")
    run_bundle("evaluating", files, **common, network_options=SMALL["network_options"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert (
        summary["scored_with"]
        == scored_with(get_spec("brats"))
        == {
            "dataset": "brats",
            "foreground_label": [4],
            "empty_value": None,
            "volumetric": True,
            "grid": "labels",
        }
    )
    assert (summary["network"], summary["bundle"]) == ("fpa", "brats_fpa")
    copy = tmp_path / "copy" / "eval"
    copy.mkdir(parents=True)
    for name in ("metrics.csv", "summary.json"):
        text = (tmp_path / "eval" / name).read_text()
        (copy / name).write_text(text.replace('"fpa"', '"rfna"') if name == "summary.json" else text)
    assert "| rfna | HD95 (mm) |" in compare(str(tmp_path / "eval"), str(copy), output=str(tmp_path / "cmp"))
    enhancing = json.loads((copy / "summary.json").read_text())
    enhancing["scored_with"]["foreground_label"] = [3]  # as --foreground_label 3 (BraTS 2021+) records it
    (copy / "summary.json").write_text(json.dumps(enhancing))
    with pytest.raises(ValueError, match=r"different --foreground_label: \[3\] and \[4\]"):
        compare_folders([tmp_path / "eval", copy])


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schema not present")
@pytest.mark.parametrize("name", BUNDLES)
def test_verify_metadata_offline(name, tmp_path):
    from monai.bundle import verify_metadata

    # verify_metadata raises on a schema violation; the existing schema file is used, nothing downloads
    verify_metadata(meta_file=configs(name, "metadata.json")[0], filepath=str(SCHEMA), hash_val=SCHEMA_MD5)


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out(name):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=configs(name, "metadata.json")[0],
        config_file=configs(name, "train.json")[0],
        device="cpu",
        n=1,
        any=1,
        network_options=SMALL["network_options"],
    )


def nifti(path: Path):
    img = nib.load(str(path))
    return img.shape, img.affine


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_train_evaluate_infer(name, tmp_path):
    task, _ = name.split("_")
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), **SMALL}
    # the RFNA bundles go through the plain `run` (id "run"), the FPA ones through `run training`
    run_bundle("run" if name.endswith("rfna") else "training", configs(name, "train.json"), **common)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    state = torch.load(models / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)
    record = json.loads((models / "model.json").read_text())["run"]
    assert record["task"] == task and record["network_name"] == name.split("_")[1]
    assert record["network_options"] == SMALL["network_options"] and record["synthetic"] is True

    run_bundle("evaluating", configs(name, "train.json", "evaluate.json"), **common)
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty"
    assert len(rows) >= 2
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["count"] == len(rows) - 1 and "target_empty" in summary
    for metric in ("iou", "hd95", "fp_rate", "fn_rate"):
        assert np.isfinite(summary[metric]["mean"])

    synthetic = tmp_path / "synthetic_data"
    out = tmp_path / "predictions"
    if task == "isles":  # an external test set: a datalist with a test list alone
        from pam_monai.data import build_datalist

        external = {"test": build_datalist(task, synthetic)["test"][:1]}
        (tmp_path / "external.json").write_text(json.dumps(external))
        run_bundle(
            "evaluating",
            configs(name, "train.json", "evaluate.json"),
            **{
                **common,
                "dataset_dir": str(synthetic),
                "data_list_file_path": str(tmp_path / "external.json"),
            },
            output_dir=str(tmp_path / "external"),
        )
        rows_external = (tmp_path / "external" / "metrics.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows_external[1:]] == [external["test"][0]["case"]]
    infer = {"bundle_root": str(tmp_path), "input_dir": str(synthetic), "output_dir": str(out)}
    if name == "brats_fpa":  # weights of another shape: refused by name before any loading
        with pytest.raises(Exception) as err:
            run_bundle("inferring", configs(name, "inference.json"), **infer, network_options={})
        chain = error_chain(err.value)
        assert any("network_options: the weights were trained with" in m for m in chain), chain
        assert not out.exists()
        # weights without their model.json (copied alone): still named, by their keys and shapes
        (models / "model.json").rename(models / "model.json.bak")
        with pytest.raises(Exception) as err:
            run_bundle(
                "evaluating",
                configs(name, "train.json", "evaluate.json"),
                **{**common, "network_options": {}},
            )
        assert any("these weights do not fit FPAUNet as built here" in m for m in error_chain(err.value))
        (models / "model.json.bak").rename(models / "model.json")
    # the network the weights were trained as comes from model.json (brats_fpa); or named as trained
    options = {} if name == "brats_fpa" else {"network_options": SMALL["network_options"]}
    run_bundle("inferring", configs(name, "inference.json"), **infer, **options)
    written = sorted(out.iterdir())
    assert written, "inference wrote nothing"
    if task == "cityscapes":
        from PIL import Image

        frames = sorted(synthetic.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
        assert len(written) == len(frames)
        for png in written:
            frame = next(f for f in frames if f.name.replace("_leftImg8bit.png", "") in png.name)
            mask = np.asarray(Image.open(png))
            assert mask.shape == np.asarray(Image.open(frame)).shape[:2]
            assert set(np.unique(mask)) <= {0, 255}
    else:
        sources = {it["case"]: it["image"][0] for it in discover_cases(task, synthetic)}
        assert len(written) == len(sources)
        for seg in written:
            shape, affine = nifti(Path(sources[seg.name.replace("_seg.nii.gz", "")]))
            out_shape, out_affine = nifti(seg)
            assert out_shape == shape
            np.testing.assert_allclose(out_affine, affine)
            assert set(np.unique(np.asarray(nib.load(str(seg)).dataobj))) <= {0, 1}
        # evaluation and inference: the same masks, scored on the case's own grid
        from pam_monai.data import get_spec
        from pam_monai.metrics import case_metrics

        fg = get_spec(task).resolve_labels(None)[0]
        labels = {it["case"]: it["label"] for it in discover_cases(task, synthetic)}
        for row in rows[1:]:
            case, iou = row.split(",")[:2]
            mask = np.asarray(nib.load(str(out / f"{case}_seg.nii.gz")).dataobj) > 0
            label = np.isin(np.asarray(nib.load(labels[case]).dataobj), fg)
            assert case_metrics(mask, label)["iou"] == pytest.approx(float(iou), rel=1e-4, abs=1e-6), case


def test_gpu_fast_path_switches_compute_the_plain_training_step(tmp_path):
    """The bundle's GPU fast-path structure (channels-last batches and network, fusible norm,
    up-sampling as matrix products, dilated convolutions as taps; bf16 and compilation aside),
    resolved from train.json on the CPU, computes the plain configuration's loss and gradients on
    the same batch with the same weights: the switches change the speed, not the function."""
    from pam_monai.networks.blocks.fastconv import FastConv2d
    from pam_monai.networks.blocks.fpa import FPABlock
    from pam_monai.networks.blocks.norm import FastInstanceNorm
    from pam_monai.networks.blocks.resize import LinearResize

    name = "brats_fpa"
    results = {}
    # "plane": also the experiments contiguous_attention and plane_kernels (their CPU path)
    for label, fast, plane in (("plain", False, False), ("fast", True, False), ("plane", True, True)):
        parser = ConfigParser()
        parser.read_config(configs(name, "train.json")[0])
        parser.update(
            {
                "bundle_root": str(tmp_path),
                "dataset_dir": str(tmp_path / "data"),
                **SMALL,
                "channels_last": fast,
                "fast_norm": fast,
                "resize": "matmul" if fast else "interpolate",
                "tap_convs": fast,
                "contiguous_attention": plane,
                "plane_kernels": plane,
                "device_data": False,
            }
        )
        parser.parse()
        # float64: in fp32 the fast path's other summation order moved a tiny gradient by 1.2e-6 for
        # some weights (unseeded 1 run in 3 on torch 2.13; seeded, on torch 2.4), past any tolerance
        # that still tells a wrong function from rounding
        torch.manual_seed(0)
        network = parser.get_parsed_content("network").double()
        fpa_blocks = [m for m in network.modules() if isinstance(m, FPABlock)]
        assert fpa_blocks and all(m.plane_kernels == m.contiguous_attention == plane for m in fpa_blocks)
        if fast:
            assert any(isinstance(m, FastInstanceNorm) for m in network.modules())
            assert all(m.impl == "matmul" for m in network.modules() if isinstance(m, LinearResize))
            assert any(getattr(m, "taps", False) for m in network.modules() if isinstance(m, FastConv2d))
            assert next(p for p in network.parameters() if p.ndim == 4).is_contiguous(
                memory_format=torch.channels_last
            )
            network.load_state_dict(results["plain"]["state"])
        loader = parser.get_parsed_content("train#dataloader")
        prepare = parser.get_parsed_content("train#prepare_batch")
        torch.manual_seed(0)  # the same flips
        x, y = prepare(next(iter(loader)), torch.device("cpu"))[:2]
        assert x.is_contiguous(memory_format=torch.channels_last) == fast
        x = x.double()  # keeps the memory layout
        loss = parser.get_parsed_content("loss")(network(x), y)
        grads = torch.autograd.grad(loss, list(network.parameters()))
        results[label] = {"state": network.state_dict(), "loss": loss.detach(), "grads": grads, "x": x}
    for label in ("fast", "plane"):
        torch.testing.assert_close(results[label]["x"], results["plain"]["x"])
        torch.testing.assert_close(results[label]["loss"], results["plain"]["loss"], rtol=1e-12, atol=1e-14)
        for g, ref in zip(results[label]["grads"], results["plain"]["grads"]):
            torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "brats2018").is_dir(), reason="../shared/data not present")
def test_inference_on_real_brats_keeps_shape_and_affine(tmp_path):
    name = "brats_rfna"
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), **SMALL}
    run_bundle("training", configs(name, "train.json"), **common)
    out = tmp_path / "real"
    run_bundle(
        "inferring",
        configs(name, "inference.json"),
        bundle_root=str(tmp_path),
        input_dir=str(SHARED / "data" / "brats2018"),
        output_dir=str(out),
        network_options=SMALL["network_options"],
    )
    for case in ("Brats18_2013_2_1", "Brats18_TCIA05_396_1"):
        shape, affine = nifti(SHARED / "data" / "brats2018" / case / f"{case}_flair.nii.gz")
        out_shape, out_affine = nifti(out / f"{case}_seg.nii.gz")
        assert out_shape == shape == (240, 240, 155)
        np.testing.assert_allclose(out_affine, affine)
        ref = nib.load(str(SHARED / "data" / "brats2018" / case / f"{case}_flair.nii.gz")).header
        hdr = nib.load(str(out / f"{case}_seg.nii.gz")).header
        assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (
            int(ref["qform_code"]),
            int(ref["sform_code"]),
        )
        assert hdr.get_xyzt_units() == ref.get_xyzt_units()


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_ckpt_export_torchscript_matches_eager(name, tmp_path):
    from monai.bundle import ckpt_export

    from pam_monai.networks import get_network

    task, network = name.split("_")
    spec = DATASETS[task]
    net = get_network(
        network,
        spatial_dims=2,
        in_channels=spec.in_channels,
        out_channels=1,
        options=SMALL["network_options"],
    ).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(ckpt),
        meta_file=configs(name, "metadata.json")[0],
        config_file=configs(name, "train.json")[0],
        network_options=SMALL["network_options"],
    )
    scripted = torch.jit.load(str(ts))
    x = torch.randn(2, *spec.sample_shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)
    # from inference.json the network is the one model.json names: no options to repeat
    models = tmp_path / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / "model.pt")
    record = {"task": task, "network_name": network, "network_options": SMALL["network_options"]}
    (models / "model.json").write_text(json.dumps({"metric": "val_iou", "value": 0.5, "run": record}))
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "recorded.ts"),
        ckpt_file=str(models / "model.pt"),
        meta_file=configs(name, "metadata.json")[0],
        config_file=configs(name, "inference.json")[0],
        bundle_root=str(tmp_path),
    )
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.load(str(tmp_path / "recorded.ts"))(x), net(x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("name", BUNDLES)
def test_bundles_have_monai_workflow_properties(name):
    """Every required property of MONAI's train and infer workflows (what BundleWorkflow and the
    model zoo's property check look up) has its config id in the bundle."""
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    for files, table in ((("train.json",), TrainProperties), (("inference.json",), InferProperties)):
        parser = ConfigParser()
        parser.read_config(configs(name, *files))
        missing = [
            prop[BundlePropertyConfig.ID]
            for prop in table.values()
            if prop[BundleProperty.REQUIRED] and prop[BundlePropertyConfig.ID] not in parser
        ]
        assert not missing, (files, missing)


def test_bundle_root_is_the_bundle_or_refused(tmp_path, monkeypatch):
    """A bundle's outputs go into the bundle whose config monai.bundle was given; in-process, into
    bundles/<name> from the repository root, "." from the bundle's own folder, and anywhere else
    the run is refused instead of writing into that folder."""
    from pam_monai.engines import bundle_root

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    monkeypatch.chdir(ROOT)
    assert parser.get_parsed_content("bundle_root") == "bundles/brats_fpa"
    monkeypatch.chdir(ROOT / "bundles" / "brats_fpa")
    assert parser.get_parsed_content("bundle_root", lazy=False) == "."
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=rf"bundle_root: {tmp_path} is not a bundle's folder .*nor bundles/x/configs"
    ):
        bundle_root("bundles/x")
    # `python -m monai.bundle run ... --config_file <copy>/configs/train.json`: the copy, wherever it runs from
    import monai.bundle.__main__ as cli

    monkeypatch.chdir(ROOT)
    copy = tmp_path / "elsewhere" / "brats_fpa" / "configs"
    for argv in (
        [cli.__file__, "run", "training", "--config_file", str(copy / "train.json")],
        [
            cli.__file__,
            "run",
            "evaluating",
            f"--config_file=['{copy / 'train.json'}','{copy / 'evaluate.json'}']",
        ],
    ):
        monkeypatch.setattr(sys, "argv", argv)
        assert bundle_root("bundles/brats_fpa") == str(copy.parent)
    monkeypatch.setattr(
        sys, "argv", ["pytest", "--config_file", str(copy / "train.json")]
    )  # not monai.bundle
    assert bundle_root("bundles/brats_fpa") == "bundles/brats_fpa"
    # in Python: the bundle whose configs MONAI's workflow runs (monai.bundle.run / load), from anywhere
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(
        config_file=configs("brats_fpa", "inference.json"), workflow_type="infer", logging_file=False
    )
    workflow.initialize()
    assert Path(workflow.bundle_root) == ROOT / "bundles" / "brats_fpa"


def test_compiled_trainer_keeps_static_shapes():
    """An epoch's last batch is smaller: torch.compile's default then recompiles the network with a
    symbolic batch size and runs every later full batch through that graph (more host work per
    launch, in a step bound by launches); the bundles compile static graphs (one per batch size; the
    compiled bundles drop that batch, ``drop_last``, so there is one)."""
    import torch

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    for mode in (None, "reduce-overhead"):
        parser["compile_mode"] = mode
        kwargs = parser.get_parsed_content("train#trainer#compile_kwargs", instantiate=True)
        assert kwargs == ({"dynamic": False} if mode is None else {"dynamic": False, "mode": mode})
    graphs = []

    def backend(gm, example_inputs):
        graphs.extend(tuple(t.shape) for t in example_inputs if t.dim() == 4 and t.shape[-1] == 8)
        return gm.forward

    torch._dynamo.reset()
    net = torch.compile(torch.nn.Conv2d(4, 1, 3), backend=backend, dynamic=kwargs["dynamic"])
    for batch in (4, 4, 3, 4):
        net(torch.randn(batch, 4, 8, 8))
    assert graphs == [(4, 4, 8, 8), (3, 4, 8, 8)]  # no graph with a symbolic batch size
    torch._dynamo.reset()


@pytest.mark.parametrize("device_data", [False, True])
def test_compiled_bundle_training_compiles_one_graph_though_the_slices_are_no_multiple_of_the_batch(
    device_data, tmp_path, caplog
):
    """An epoch's last batch is smaller when the training slices are no multiple of the batch: the
    static-shape compile then built the forward and backward a second time for it (on the H100,
    FPA at batch 50: over a minute, in every compiled training's first epoch). Compiled, the
    bundles drop that incomplete batch, through either loader: one shape, one graph."""
    from ignite.engine import Events

    shapes = []

    def backend(gm, example_inputs):  # dynamo's graphs; what they run is irrelevant here
        shapes.append(
            next(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4)
        )
        return gm.forward

    workflow = brats_fpa_training(
        tmp_path,
        **{**SMALL, "epochs": 2, "network_name": "unet", "crop_size": [32, 32], "val_interval": 3},
        **{
            "compile": True,
            "device_data": device_data,
            "train#trainer#compile_kwargs": {"dynamic": False, "backend": backend},
        },
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    slices = len(workflow.parser.get_parsed_content("train#dataset"))
    assert slices % SMALL["batch_size"], f"{slices} slices: the test needs an incomplete last batch"
    batches = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: batches.append(len(e.state.batch)))
    torch._dynamo.reset()
    try:
        with caplog.at_level("INFO", logger="pam_monai"):
            trainer.run()
    finally:
        torch._dynamo.reset()
    steps = slices // SMALL["batch_size"]
    said = f"{slices} slices, {steps} optimiser steps per epoch x 2 epochs = {2 * steps}"
    assert f"{said} ({slices - steps * SMALL['batch_size']} slices of each epoch dropped" in caplog.text
    assert batches == [SMALL["batch_size"]] * 2 * steps and trainer.state.epoch_length == steps
    assert shapes == [(SMALL["batch_size"], 4, 32, 32)]


def test_amp_and_compile_flags_from_the_command_line_are_booleans():
    """``--amp false`` / ``--compile false`` arrive as the strings "false" (Fire parses only
    True/False), which MONAI's trainer and evaluator took as true: a run that asked for eager fp32
    compiled the network (and autocast it on a GPU)."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    for value, want in (("false", False), ("true", True), (False, False), (True, True)):
        parser["amp"], parser["compile"] = value, value
        for key in ("train#trainer#amp", "train#trainer#compile", "validate#evaluator#amp"):
            got = parser.get_parsed_content(key, instantiate=False)
            assert got is want, (key, value, got)
    parser["fast"], parser["compile"], parser["amp"] = "true", "false", "$pam_monai.engines.as_bool(@fast)"
    assert parser.get_parsed_content("train#trainer#compile", instantiate=False) is False
    assert parser.get_parsed_content("train#trainer#amp", instantiate=False) is True


def test_drop_last_follows_compile_unless_overridden():
    """The training loader drops an epoch's incomplete last batch when the network is compiled (one
    batch shape: one compiled graph, not a second compile of over a minute on a GPU) and keeps it
    otherwise; ``--drop_last true|false`` (strings from the command line) overrides either."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    assert parser["train#dataloader#drop_last"] == "@drop_last"
    for compile_, want in (("true", True), ("false", False), (True, True), (False, False)):
        parser["compile"] = compile_
        assert parser.get_parsed_content("drop_last", instantiate=False) is want, compile_
    parser["compile"] = "true"
    for value in ("true", "false", True, False):
        parser["drop_last"] = value
        assert parser.get_parsed_content("train#dataloader#drop_last", instantiate=False) == value


@pytest.mark.parametrize("name", BUNDLES)
def test_train_transforms_reach_the_training_slices(name):
    """``train_transforms`` (default none) is the users' per-step augmentation: MONAI dictionary
    transforms given as config entries become the training dataset's transform, in order."""
    from monai.transforms import Compose, RandFlipd, RandGaussianNoised

    parser = ConfigParser()
    parser.read_config(configs(name, "train.json"))
    assert parser["train_transforms"] == []
    assert parser.get_parsed_content("train#dataset#transform") is None
    parser["train_transforms"] = [
        {"_target_": "RandGaussianNoised", "keys": ["image"], "prob": 0.2},
        {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
    ]
    parser.parse(reset=True)
    transform = parser.get_parsed_content("train#dataset#transform")
    assert isinstance(transform, Compose)
    assert [type(t) for t in transform.transforms] == [RandGaussianNoised, RandFlipd]


def test_fast_compiles_on_a_gpu_only_with_triton(monkeypatch, caplog):
    """PyTorch's Windows CUDA builds have no Triton, so the default fast path's torch.compile failed
    at the first training step there: without Triton ``fast`` trains uncompiled on a GPU (and says
    so); ``--compile true`` still forces it, and a CPU run with ``--fast true`` is unchanged."""
    from pam_monai.engines import fast_path

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser["fast"] = "true"
    for device, triton, want in (("cuda:0", False, False), ("cuda:0", True, True), ("cpu", False, True)):
        monkeypatch.setattr(fast_path, "_has_triton", lambda triton=triton: triton, raising=False)
        parser["device"] = f"$torch.device('{device}')"
        assert parser.get_parsed_content("train#trainer#compile", instantiate=False) is want, (device, triton)
    assert "training without torch.compile: on cuda:0 it needs Triton" in caplog.text
    parser["compile"] = "true"
    assert parser.get_parsed_content("train#trainer#compile", instantiate=False) is True


@pytest.mark.parametrize("name", BUNDLES)
def test_multi_gpu_config_disables_the_writers_it_means(name):
    """multi_gpu_train.json turns rank > 0's TensorBoard writers and validation log off by list
    position: those positions must hold those handlers (a handler inserted before them would shift
    them), and every process validates (its share of the cases)."""
    parser = ConfigParser()
    parser.read_config(configs(name, "train.json", "multi_gpu_train.json"))
    overrides = json.loads(Path(configs(name, "multi_gpu_train.json")[0]).read_text())
    disabled = [k[: -len("#_disabled_")] for k in overrides if k.endswith("#_disabled_")]
    assert len(disabled) == 4, disabled
    targets = sorted(parser[handler + "#_target_"] for handler in disabled)
    expected = [
        "StatsHandler",
        "pam_monai.engines.ProgressBar",
        "pam_monai.engines.TensorBoardStatsHandler",
        "pam_monai.engines.TensorBoardStatsHandler",
    ]
    assert targets == expected, disabled
    assert "validate#handlers#2" in disabled  # the validation's StatsHandler
    # every process validates: handlers_of_rank keeps the ValidationHandler (test below)
    assert (
        parser["train#trainer#train_handlers"]
        == "$pam_monai.engines.handlers_of_rank(@train#handlers, @rank)"
    )
    assert parser["validate#dataloader#sampler"] == "@validate#sampler"
    assert parser["validate#sampler#_target_"].endswith("DistributedSampler")


@pytest.mark.parametrize("name", BUNDLES)
def test_multi_gpu_training_stops_every_process_when_one_fails(name):
    """A training step that raised in one process left the others waiting for it until the process
    group's timeout (NCCL; other nodes under torchrun): every process, rank 0 and the others,
    runs StopEveryProcessOnError (tests/test_reliability.py shows what it does)."""
    from pam_monai.engines import StopEveryProcessOnError, handlers_of_rank

    parser = ConfigParser()
    parser.read_config(configs(name, "train.json", "multi_gpu_train.json"))
    targets = [handler["_target_"] for handler in parser["train#handlers"]]
    assert "pam_monai.engines.StopEveryProcessOnError" in targets, targets
    # the handlers of the processes other than rank 0: the filter must keep it
    assert (
        parser["train#trainer#train_handlers"]
        == "$pam_monai.engines.handlers_of_rank(@train#handlers, @rank)"
    )
    stop = StopEveryProcessOnError()
    for rank in (0, 1):
        assert handlers_of_rank([stop], rank) == [stop], rank


def test_processes_other_than_rank_0_run_only_the_every_rank_handlers():
    """rank 0 runs every training handler; the others drop the loggers (their output is rank 0's)
    and keep those every process must run (here: the error exchange, decollation, bf16 without a
    scaler, validation)."""
    from monai.handlers import StatsHandler, ValidationHandler

    from pam_monai.engines import (
        Bf16WithoutLossScaling,
        DecollateKeepingLoss,
        StopEveryProcessOnError,
        handlers_of_rank,
    )

    handlers = [StatsHandler(), StopEveryProcessOnError(), DecollateKeepingLoss(), Bf16WithoutLossScaling()]
    handlers.append(ValidationHandler(interval=1))  # every process validates its share of the cases
    assert handlers_of_rank(handlers, 0) == handlers
    assert handlers_of_rank(handlers, "1") == handlers[1:]


SPAWNED_RANKS = """
import json, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from monai.bundle import ConfigParser
import pam_monai.engines, pam_monai.networks

def run(rank, folder, files, options):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)
    parser = ConfigParser()
    parser.read_config(json.loads(files))
    parser.update({"device": "cpu", "network_options": json.loads(options)})
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")  # DDP: every rank starts from rank 0's weights
    weights = float(sum(p.detach().double().sum() for p in network.parameters()))
    batch = {"image": torch.arange(32.0).reshape(16, 1, 2, 1), "label": torch.zeros(16, 1, 2, 1)}
    image, _ = parser.get_parsed_content("train#prepare_batch")(batch)
    flipped = (image[:, 0, 0, 0] % 2 == 1).tolist()  # BRATS flips axis -2
    json.dump({"weights": weights, "flipped": flipped}, open(f"{folder}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    # forked: the ranks start with MONAI imported (spawned, each imports it again: slow on 2 cores)
    mp.start_processes(run, args=tuple(sys.argv[1:]), nprocs=2, start_method="fork")
"""


def test_multi_gpu_ranks_draw_their_own_flips_from_the_same_weights(tmp_path):
    """Every process seeded its global RNG with the same seed, so rank r's k-th sample was flipped
    exactly when rank 0's k-th sample was: a global batch of 2 x B slices had only B independent
    flips (not the single-process run's 2 x B that README's 'halve batch_size' promises). Each
    rank draws its own; DDP still starts them all from rank 0's weights."""
    script = tmp_path / "ranks.py"
    script.write_text(SPAWNED_RANKS)
    files = json.dumps(configs("brats_fpa", "train.json", "multi_gpu_train.json"))
    options = json.dumps(SMALL["network_options"])
    cmd = [sys.executable, str(script), str(tmp_path), files, options]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(cmd, check=True, timeout=120, cwd=ROOT, env=env)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert any(ranks[0]["flipped"]) and not all(ranks[0]["flipped"])  # the batch went through the flips
    assert ranks[0]["flipped"] != ranks[1]["flipped"], "both ranks flipped the same samples"


VALIDATING_RANKS = """
import json, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from ignite.engine import Engine
from monai.bundle import ConfigParser
import pam_monai.engines, pam_monai.networks

def run(rank, folder, files):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)
    parser = ConfigParser()
    parser.read_config(json.loads(files))
    parser.update({"device": "cpu", "network_options": {"features": [4, 8, 16, 32], "norm": "batch"}})
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    network.train()
    network(torch.randn(2, 4, 32, 32) + rank)  # a training step: each rank's BatchNorm sees its own batch
    stats = lambda: [b.tolist() for b in network.module.buffers()]
    trained = stats()
    evaluator = Engine(lambda engine, batch: None)  # the validation's start, with its handlers
    for i, handler in enumerate(parser["validate#handlers"]):  # but the metrics, logs and saver
        target = handler.get("_target_", "") if isinstance(handler, dict) else "@validate#metrics"
        if not target.endswith(("metrics", "BestCheckpoint", "StatsHandler")):
            handler = parser.get_parsed_content(f"validate#handlers#{i}")
            if handler is not None:  # None: disabled on this rank (the progress bar off rank 0)
                handler.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    json.dump({"trained": trained, "validated": stats()}, open(f"{folder}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(run, args=tuple(sys.argv[1:]), nprocs=2, start_method="fork")
"""


def test_multi_gpu_ranks_validate_with_rank_0s_normalisation_statistics(tmp_path):
    """Every process validates its share of the cases, each with its own copy of the network: DDP
    gives them rank 0's buffers at each training step's start, but the step's BatchNorm then
    updates each copy's running statistics from its own batch, so with ``norm: batch`` each
    process scored its cases with other statistics than the model.pt rank 0 saved. The
    validation starts by taking rank 0's buffers."""
    script = tmp_path / "ranks.py"
    script.write_text(VALIDATING_RANKS)
    files = json.dumps(configs("brats_fpa", "train.json", "multi_gpu_train.json"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, str(script), str(tmp_path), files], check=True, timeout=120, cwd=ROOT, env=env
    )
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["trained"] != one["trained"]  # the training step left each rank its own statistics
    assert zero["validated"] == zero["trained"]  # rank 0's are kept
    assert one["validated"] == zero["trained"], "rank 1 validates with its own BatchNorm statistics"


PREPARING_RANKS = """
import collections, json, sys, torch.distributed as dist, torch.multiprocessing as mp
from monai.bundle import ConfigParser
import pam_monai.data, pam_monai.data.slices as slices, pam_monai.engines, pam_monai.networks

def counted(module, name, counts):
    original = getattr(module, name)
    def call(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)
    setattr(module, name, call)

def run(rank, folder, files, data):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)
    counts, result = collections.Counter(), {}
    counted(pam_monai.data, "check_dataset", counts)  # the data check
    counted(slices, "preprocess_case", counts)  # a volume read and preprocessed for the cache
    counted(slices, "save_atomic_npy", counts)  # a cache file written
    parser = ConfigParser()
    parser.read_config(json.loads(files))
    parser.update({"device": "cpu", "bundle_root": folder, "dataset_dir": data, "task": "nnunet"})
    try:
        parser.get_parsed_content("initialize")
        dataset = parser.get_parsed_content("train#dataset")
        result["files"] = sorted(str(a.filename) for a in dataset._images)
    except Exception as e:
        result["error"] = str(e.__cause__ or e)
    json.dump({**result, **counts}, open(f"{folder}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(run, args=tuple(sys.argv[1:]), nprocs=2, start_method="fork")
"""


def test_multi_gpu_data_is_checked_and_cached_by_rank_0_once(tmp_path):
    """Under torchrun every process checked the data set and preprocessed and wrote the same slice
    cache (atomic writes: safe, but N times the reading and writing at start-up). Rank 0 does both
    while the others wait; they map its cache files. A problem the check finds on rank 0 refuses
    on every rank, and none is left waiting for it."""
    from pam_monai.data import synth

    data = synth("nnunet", tmp_path / "Dataset960_Ranks", cases=5, slices=3, size=(40, 40))
    script = tmp_path / "ranks.py"
    script.write_text(PREPARING_RANKS)
    files = json.dumps(configs("brats_fpa", "train.json", "multi_gpu_train.json"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    def ranks(bundle_root: Path) -> list[dict]:
        bundle_root.mkdir()
        cmd = [sys.executable, str(script), str(bundle_root), files, str(data)]
        subprocess.run(cmd, check=True, timeout=120, cwd=ROOT, env=env)
        return [json.loads((bundle_root / f"rank{r}.json").read_text()) for r in (0, 1)]

    zero, one = ranks(tmp_path / "run")
    assert "error" not in zero and "error" not in one, (zero, one)
    assert zero["check_dataset"] == 1 and zero["preprocess_case"] == 3  # the 3 training cases of fold 0
    assert zero["save_atomic_npy"] == 3 * 3  # image, label, foreground counts per case
    assert one.get("check_dataset", 0) == one.get("preprocess_case", 0) == one.get("save_atomic_npy", 0) == 0
    assert one["files"] == zero["files"] and len(zero["files"]) == 3  # rank 1 maps rank 0's files

    image = data / "imagesTr" / "SYN_001_0000.nii.gz"
    img = nib.load(str(image))
    volume = np.asarray(img.dataobj).astype(np.float32)
    volume[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(volume, img.affine), str(image))
    zero, one = ranks(tmp_path / "broken")
    problem = "SYN_001: SYN_001_0000.nii.gz: 1 NaN and 0 Inf voxels"
    assert problem in zero["error"] and problem in one["error"], (zero, one)
    assert zero["check_dataset"] == 1 and one.get("check_dataset", 0) == 0


@pytest.mark.parametrize("name", BUNDLES)
def test_evaluation_does_not_keep_every_case_in_memory(name):
    """Evaluation reads each test case once: its CaseDataset must not cache them (a full-size BraTS
    test fold, 42 cases of ~88 MB preprocessed, held 3.7 GB of RAM to the end for nothing), while
    training's validation keeps its cases, read again at every validated epoch."""
    parser = ConfigParser()
    parser.read_config(configs(name, "train.json", "evaluate.json"))
    parser["validate#dataset#data"] = []
    assert parser.get_parsed_content("validate#dataset")._cache is None
    parser = ConfigParser()
    parser.read_config(configs(name, "train.json"))
    parser["validate#dataset#data"] = []
    assert parser.get_parsed_content("validate#dataset")._cache == {}


@pytest.mark.parametrize("files", [("train.json",), ("train.json", "evaluate.json")])
@pytest.mark.parametrize("name", BUNDLES)
def test_validation_and_evaluation_show_progress_over_their_cases(name, files):
    """Validation and evaluation score every case (a full-size BraTS fold on a CPU: many minutes)
    and said nothing until the end; their evaluator now has a progress bar over the cases."""
    from pam_monai.engines import ProgressBar

    parser = ConfigParser()
    parser.read_config(configs(name, *files))
    handlers = parser["validate#handlers"]
    bars = [
        i for i, h in enumerate(handlers) if isinstance(h, dict) and h["_target_"].endswith("ProgressBar")
    ]
    assert len(bars) == 1
    assert isinstance(parser.get_parsed_content(f"validate#handlers#{bars[0]}"), ProgressBar)


@pytest.mark.parametrize("files", [("train.json",), ("train.json", "evaluate.json"), ("inference.json",)])
def test_one_process_workflows_refuse_torchrun_with_several_processes(files, monkeypatch):
    """``torchrun --nproc_per_node=2`` with train.json alone (multi_gpu_train.json forgotten) trained
    the whole data set twice, both processes on cuda:0, both writing the same models/, and ended
    as if all was well; evaluation and inference likewise did all their work twice."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", *files))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError) as err:
        parser.get_parsed_content("initialize")
    chain = error_chain(err.value)
    assert any("torchrun started 2 processes" in m and "multi_gpu_train.json" in m for m in chain), chain
    monkeypatch.setenv("WORLD_SIZE", "1")  # what torchrun --nproc_per_node=1 sets
    parser.get_parsed_content("initialize")


@pytest.mark.slow
def test_multi_gpu_train_with_torchrun_on_cpu(tmp_path):
    """Two ranks (gloo), the samples held on the device, sharded by the DistributedSampler; then a
    resumed second epoch, which every rank must load (a rank that did not would fall out of step),
    ending with the weights of an uninterrupted two-epoch run: each rank resumes its own random
    state, and validation (every rank its share of the cases) draws nothing from the training's
    generators."""
    name = "brats_fpa"

    def torchrun(epochs: int, resume: bool, root: Path = tmp_path) -> str:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            str(configs(name, "train.json", "multi_gpu_train.json")),
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(root / "data"),
            "--deterministic",
            "true",
            "--epochs",
            str(epochs),
            "--resume",
            str(resume).lower(),
            "--device_data",
            "true",
            *TORCHRUN_SMALL,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        log = proc.stdout + proc.stderr
        errors = [line for line in log.splitlines() if "Error" in line or "error" in line]
        assert proc.returncode == 0, "\n".join(errors[-30:]) + log[-3000:]
        return log

    log = torchrun(1, False)
    assert (tmp_path / "models" / "checkpoint_last.pt").is_file()
    assert "val_iou" in log and "training samples held on cpu" in log
    writers = {f.name.split(".")[-2] for f in (tmp_path / "eval").glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"TensorBoard files of several processes: {writers}"  # rank 0 only
    torchrun(2, True)
    state = load_checkpoint(tmp_path / "models" / "checkpoint_last.pt")
    assert state["trainer"]["epoch"] == 2
    torchrun(2, False, tmp_path / "uninterrupted")
    whole = load_checkpoint(tmp_path / "uninterrupted" / "models" / "checkpoint_last.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0, msg=key)


INJECTED_FAILURE = """
import os, time
from ignite.engine import Events

def arm(trainer):
    def at_iteration_2(engine):
        if os.environ["INJECT"] == "fail":
            open(os.environ["INJECTED_AT"], "w").write(str(time.time()))
            raise ValueError("injected failure in a training step")
        time.sleep(300)  # NCCL's all-reduce, waiting for a dead peer: it does not notice

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), at_iteration_2)
"""


@pytest.mark.slow
def test_a_failed_training_step_on_one_node_stops_the_other_nodes(tmp_path):
    """Two torchrun agents (two "nodes", one process each, gloo): the process of the node that
    does not host the rendezvous raises in its second step. The other node's agent does not notice
    and its process, blocked in a collective that never returns (NCCL's, here a sleep), waited
    until the process group's timeout; it now stops within seconds, naming the error."""
    import socket
    import time

    (tmp_path / "inject_failure.py").write_text(INJECTED_FAILURE)
    extra = tmp_path / "inject.json"
    training = ["$import inject_failure", "$inject_failure.arm(@train#trainer)", "$@train#trainer.run()"]
    extra.write_text(json.dumps({"training": training}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def node(inject: str, host: bool) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=nodes"]
        cmd += [f"--rdzv_conf=is_host={str(host).lower()}", "-m", "monai.bundle", "run", "training"]
        cmd += [
            "--config_file",
            str([*configs("brats_fpa", "train.json", "multi_gpu_train.json"), str(extra)]),
        ]
        cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"), "--epochs", "1"]
        cmd += [*TORCHRUN_SMALL, "--dist_timeout_minutes", "5"]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "INJECT": inject,
            "INJECTED_AT": str(tmp_path / "injected"),
        }
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    nodes = [node("block", True), node("fail", False)]
    try:
        logs = [n.communicate(timeout=90)[0] for n in nodes]
    except subprocess.TimeoutExpired:
        pytest.fail("a node still waits for the node whose training step failed")
    finally:
        for n in nodes:  # SIGTERM: the agent stops its workers (they run in sessions of their own)
            if n.poll() is None:
                n.terminate()
                try:
                    n.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(n.pid, 9)
    ended = time.time()
    assert "ValueError: injected failure in a training step" in logs[1], logs[1][-3000:]
    assert re.search(
        r"process \d failed in training: ValueError: injected failure in a training step", logs[0]
    ), logs[0][-3000:]
    # its agent's closing summary names the error too (it said "To enable traceback see: ...")
    root_cause = logs[0].split("Root Cause")[-1]
    assert "process 1: ValueError: injected failure in a training step" in root_cause, root_cause
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    waited = ended - float((tmp_path / "injected").read_text())
    assert waited < 60, f"the nodes ended {waited:.0f} s after the failure"


@pytest.mark.slow
def test_mlflow_tracking(tmp_path, caplog):
    mlflow = import_mlflow()
    name = "cityscapes_fpa"
    run(
        "training",
        config_file=configs(name, "train.json")[0],
        logging_file=False,
        tracking="mlflow",
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        **SMALL,
    )
    db = tmp_path / "eval" / "mlruns.db"
    assert db.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, "no MLflow run was recorded"
    logged = set().union(*(r.data.metrics for r in runs))
    assert {"val_iou", "val_hd95", "val_fp_rate", "val_fn_rate"} <= logged, logged
    # the same --tracking to inference, which has nothing to track: MONAI's tracking patch failed
    # on it ("'str' object does not support item assignment"); it says so and segments
    out = tmp_path / "predictions"
    with caplog.at_level("WARNING", logger="pam_monai"):
        run_bundle(
            "inferring",
            configs(name, "inference.json"),
            tracking="mlflow",
            bundle_root=str(tmp_path),
            input_dir=str(tmp_path / "synthetic_data"),
            output_dir=str(out),
            network_options=SMALL["network_options"],
        )
    assert "--tracking: inference has no labels, so no metrics or losses to track" in caplog.text
    assert [p for p in out.iterdir() if p.name.endswith("_vehicles.png")]  # one mask per image
    assert not list(out.glob("config_*.json"))  # MONAI's executed config is not among the masks


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_tracking_leaves_the_masks_folder_to_the_masks(name, tmp_path):
    """``--tracking`` given to inference (MONAI's mlflow settings, or a settings file of one's own):
    MONAI saved the executed config as config_<time>.json in the output folder, among the masks
    (which a script that takes every file there as a mask then read). inference.json turns it off."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.bundle.workflows import ConfigWorkflow

    out = tmp_path / "predictions"
    for settings in (DEFAULT_MLFLOW_SETTINGS, {"handlers_id": {}, "configs": {}}):
        parser = ConfigParser()
        parser.read_config(configs(name, "inference.json"))
        parser.update({"bundle_root": str(tmp_path), "output_dir": str(out)})
        ConfigWorkflow.patch_bundle_tracking(parser, settings)
        assert parser["save_execute_config"] is None
        assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == []


def test_inference_tracking_warning_says_what_happens(tmp_path, caplog):
    """``--tracking mlflow`` given to inference: the warning said MONAI saved its config as
    config_<time>.json in --output_dir, but inference.json sets save_execute_config false, so
    nothing is written at all (no config, no MLflow database); the warning says that."""
    from monai.bundle import ConfigWorkflow

    from pam_monai.engines import check_inference_tracking

    out = tmp_path / "predictions"
    workflow = ConfigWorkflow(
        config_file=configs("brats_fpa", "inference.json"),
        workflow_type="infer",
        logging_file=False,
        tracking="mlflow",
        bundle_root=str(tmp_path),
        output_dir=str(out),
    )

    def initialize(self):  # check_inference_tracking finds the workflow as a caller's ``self``
        check_inference_tracking()

    with caplog.at_level("WARNING", logger="pam_monai"):
        initialize(workflow)
    (warning,) = caplog.messages
    assert warning.startswith("--tracking: inference has no labels")
    assert "config_" not in warning
    assert "records nothing" in warning
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == []


def test_mlflow_tracking_logs_the_loss_every_log_every_iterations_and_the_run_settings(tmp_path):
    """MONAI's --tracking mlflow logged the loss at every iteration (a wait for the GPU and a
    database write after each step) and, as parameters, only max_epochs and epoch_length: it now
    logs by the bundle's log_every, as TensorBoard does, and the run's settings."""
    mlflow = import_mlflow()
    run(
        "training",
        config_file=configs("brats_fpa", "train.json")[0],
        logging_file=False,
        tracking="mlflow",
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        **{**SMALL, "log_every": 3, "learning_rate": 0.002},
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    (found,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "train_loss")]
    assert steps == [1, 3, 4], (
        f"train_loss logged at iterations {steps} of 4 (log_every 3: 1, 3 and the last)"
    )
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_iou")] == [1]
    params = found.data.params
    assert params["network_name"] == "fpa" and json.loads(params["network_options"].replace("'", '"')) == {
        "features": [8, 16, 32, 64]
    }
    settings = {k: params[k] for k in ("learning_rate", "batch_size", "epochs", "seed")}
    assert settings == {"learning_rate": "0.002", "batch_size": "8", "epochs": "1", "seed": "0"}


def test_mlflow_resumed_run_keeps_its_parameters_and_trains(tmp_path, caplog):
    """The bundles name each MLflow run, and MONAI continues a named run that is still active (a
    killed training's): a resumed training with more epochs logged ``epochs`` anew into it, which
    MLflow refused ("Changing param values is not allowed"), and the training stopped at its start."""
    mlflow = import_mlflow()
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"

    def train(epochs: int, finish: bool) -> None:
        trainer = Engine(lambda engine, batch: {"loss": 1.0})
        TrackingEvery(params={"epochs": epochs, "seed": 0}).attach(trainer)
        MLFlowHandler(
            tracking_uri=uri, experiment_name="e", run_name="fpa_seed0_fold0", close_on_complete=finish,
            output_transform=lambda output: output["loss"],
        ).attach(trainer)  # fmt: skip
        trainer.run([0, 1], max_epochs=1)

    train(1, finish=False)  # killed: its run stays active
    with caplog.at_level("WARNING", logger="pam_monai"):
        train(2, finish=True)  # resumed with more epochs
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (found,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert {k: found.data.params[k] for k in ("epochs", "seed")} == {"epochs": "1", "seed": "0"}
    assert "keeps its parameters epochs=1; this run has epochs=2" in caplog.text, caplog.text


def test_mlflow_evaluation_run_records_what_it_evaluated(tmp_path):
    """``--tracking mlflow`` with evaluate.json recorded no parameter in the evaluation's run (the
    training's records its settings): not the network, the weights, the data or the split. It now
    records them, as training does (once a run: TrackingEvery)."""
    mlflow = import_mlflow()
    from ignite.engine import Engine
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.bundle.workflows import ConfigWorkflow
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import TrackingEvery

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json", "evaluate.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), "seed": 2, "fold": 1})
    parser.update({"check_data": False, "save_execute_config": False, "device": "$torch.device('cpu')"})
    ConfigWorkflow.patch_bundle_tracking(parser, DEFAULT_MLFLOW_SETTINGS)
    evaluator = Engine(lambda engine, batch: None)
    for handler in parser.get_parsed_content("validate#handlers"):
        if isinstance(handler, (TrackingEvery, MLFlowHandler)):
            handler.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    (found,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    params = found.data.params
    assert found.info.run_name == "fpa_seed2_fold1_evaluate" and found.info.status == "FINISHED"
    assert {k: params.get(k) for k in ("task", "network_name", "eval_split", "seed", "fold")} == {
        "task": "brats",
        "network_name": "fpa",
        "eval_split": "test",
        "seed": "2",
        "fold": "1",
    }, params
    assert params["ckpt_path"] == str(tmp_path / "models" / "model.pt"), params
    assert params["data_root"] == str(tmp_path / "synthetic_data") and params["synthetic"] == "True", params


def test_mlflow_each_evaluation_has_a_run_of_its_own(tmp_path, caplog):
    """MONAI's tracking handler of an evaluator (evaluate.json's, from its validator settings) left
    the evaluation's run active: the next evaluation, of other weights, continued it, which kept
    the first one's parameters (ckpt_path) and logged the new scores beside them. evaluate.json's
    TrackingEvery now ends the run when the evaluation completes."""
    mlflow = import_mlflow()
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for ckpt in ("a.pt", "b.pt"):
        evaluator = Engine(lambda engine, batch: None)
        TrackingEvery(params={"ckpt_path": ckpt}, end_run=True).attach(evaluator)
        MLFlowHandler(
            tracking_uri=uri, experiment_name="e", run_name="fpa_evaluate", iteration_log=False
        ).attach(evaluator)
        evaluator.run([0], max_epochs=1)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert sorted((r.data.params["ckpt_path"], r.info.status) for r in runs) == [
        ("a.pt", "FINISHED"),
        ("b.pt", "FINISHED"),
    ]
    assert "keeps its parameters" not in caplog.text


def test_mlflow_run_of_a_failed_engine_run_ends_failed(tmp_path, caplog):
    """A training or evaluation whose run raised left its MLflow run RUNNING (MONAI's tracking
    handler ends it on COMPLETED only), and MONAI continues a named run that is not FINISHED: the
    next evaluation, of other weights, logged its scores into the failed one's run beside its
    ckpt_path. TrackingEvery now ends the run FAILED when the engine's run raises (the error goes
    on unchanged, StatsHandler still logs it), and an evaluation (``end_run``) has a run of its own."""
    mlflow = import_mlflow()
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler, StatsHandler

    from pam_monai.engines import TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    error = RuntimeError("injected failure")

    def engine_run(name: str, params: dict, end_run: bool, fail: bool) -> None:
        def step(engine, batch):
            if fail:
                raise error
            return {"loss": 1.0}

        engine = Engine(step)
        StatsHandler(iteration_log=False, name=None).attach(engine)  # the bundles' order; to engine.logger
        TrackingEvery(params=params, end_run=end_run).attach(engine)
        MLFlowHandler(
            tracking_uri=uri,
            experiment_name=name,
            run_name=name,
            iteration_log=False,
            close_on_complete=not end_run,
        ).attach(engine)
        engine.run([0], max_epochs=1)

    def runs(name: str) -> list:
        found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        return sorted((r.data.params.get("ckpt_path", ""), r.info.status) for r in found)

    for name, end_run in (("evaluate", True), ("train", False)):
        with caplog.at_level("ERROR"), pytest.raises(RuntimeError) as raised:
            engine_run(name, {"ckpt_path": "a.pt"}, end_run, fail=True)
        assert raised.value is error and str(raised.value) == "injected failure"
        assert "Exception: injected failure" in caplog.text, caplog.text  # StatsHandler's line
        assert runs(name) == [("a.pt", "FAILED")]
        caplog.clear()
    engine_run("evaluate", {"ckpt_path": "b.pt"}, end_run=True, fail=False)
    assert runs("evaluate") == [("a.pt", "FAILED"), ("b.pt", "FINISHED")]
    engine_run("train", {"ckpt_path": "a.pt"}, end_run=False, fail=False)  # resumed: continues its run
    assert runs("train") == [("a.pt", "FINISHED")]


def test_mlflow_resumed_training_shows_its_failed_run_running(tmp_path):
    """A resumed training continues its failed training's MLflow run (MONAI continues a named run
    that is not FINISHED), which stayed FAILED while the resumed training ran, FINISHED only at its
    end: the run is set back to RUNNING at the start of the training that continues it."""
    mlflow = import_mlflow()
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    seen = []

    def status() -> str:
        (found,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
        return found.info.status

    def train(fail: bool) -> None:
        def step(engine, batch):
            if fail:
                raise RuntimeError("injected failure")
            seen.append(status())
            return {"loss": 1.0}

        trainer = Engine(step)
        TrackingEvery(params={"epochs": 1}).attach(trainer)
        MLFlowHandler(
            tracking_uri=uri,
            experiment_name="train",
            run_name="train",
            iteration_log=False,
            close_on_complete=True,
        ).attach(trainer)  # MONAI's trainer settings
        trainer.run([0, 1], max_epochs=1)

    with pytest.raises(RuntimeError, match="injected failure"):
        train(fail=True)
    assert status() == "FAILED"
    train(fail=False)  # resumed: continues the failed run
    assert seen == ["RUNNING", "RUNNING"], f"the continued run was {seen} while the training ran"
    assert status() == "FINISHED"


def test_mlflow_training_stopped_by_sigterm_ends_its_run_killed(tmp_path):
    """A SIGTERM (a cluster's preemption) ended the process at once: its MLflow run stayed RUNNING.
    StopOnTerminate raises it in the run as Ctrl-C does; the run is ended KILLED (not FAILED: nothing
    went wrong), the process's SIGTERM handler is put back, and the exit status is 128 + 15."""
    mlflow = import_mlflow()
    import signal

    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import StopOnTerminate, Terminated, TrackingEvery

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    before = signal.getsignal(signal.SIGTERM)

    def step(engine, batch):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the main thread

    trainer = Engine(step)
    StopOnTerminate().attach(trainer)
    TrackingEvery(params={"epochs": 1}).attach(trainer)
    tracking = MLFlowHandler(tracking_uri=uri, experiment_name="train", run_name="train", iteration_log=False)
    tracking.attach(trainer)
    with pytest.raises(Terminated) as stopped:
        trainer.run([0, 1], max_epochs=1)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert found.info.status == "KILLED"


@pytest.mark.parametrize("stop", ["sigterm in training", "sigterm in validation", "error"])
def test_a_sigterm_is_not_logged_as_an_error_with_a_traceback(caplog, stop):
    """A SIGTERM during an epoch made MONAI's StatsHandler log "Exception: stopped by SIGTERM" at
    ERROR with the traceback of wherever the signal landed (once per engine it went through), as if
    the run had failed. That record is logged at DEBUG now (its traceback there for who asks);
    Ignite's ERROR line still says what stopped the run, and a real error's traceback stays."""
    import logging
    import signal

    from ignite.engine import Engine
    from monai.engines import Evaluator
    from monai.handlers import StatsHandler, ValidationHandler

    from pam_monai.engines import StopOnTerminate, Terminated

    def validate(engine, batch):
        if stop == "sigterm in validation":
            os.kill(os.getpid(), signal.SIGTERM)

    def step(engine, batch):
        if stop == "sigterm in training":
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the main thread
        elif stop == "error":
            raise ValueError("a real error")

    class Recorder(logging.Handler):  # MONAI's StatsHandler logger does not propagate: caplog sees nothing
        def emit(self, record):
            records.append(record)

    recorder = Recorder()
    for level in (logging.INFO, logging.DEBUG):
        validator = Evaluator(device=torch.device("cpu"), val_data_loader=[0], iteration_update=validate)
        stats = StatsHandler(iteration_log=False)
        stats.attach(validator)
        trainer = Engine(step)
        StopOnTerminate().attach(trainer)
        ValidationHandler(validator=validator, interval=1, epoch_level=False).attach(trainer)
        StatsHandler(iteration_log=False).attach(trainer)
        stats.logger.setLevel(level)  # MONAI's get_logger sets INFO at every StatsHandler
        stats.logger.addHandler(recorder)
        records = []
        caplog.clear()
        try:
            with pytest.raises(ValueError if stop == "error" else Terminated):
                trainer.run([0], max_epochs=1)
        finally:
            stats.logger.removeHandler(recorder)
            stats.logger.setLevel(logging.INFO)
        tracebacks = [(r.levelno, r.exc_info[0]) for r in records if r.exc_info]
        if stop == "error":
            # Ignite fires EXCEPTION_RAISED twice for an error (not a SystemExit) in an iteration
            assert tracebacks and set(tracebacks) == {(logging.ERROR, ValueError)}, tracebacks
            continue
        engines = 2 if stop == "sigterm in validation" else 1
        assert tracebacks == [(logging.DEBUG, Terminated)] * engines * (level == logging.DEBUG), tracebacks
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all("terminating due to exception: stopped by SIGTERM" in e for e in errors), errors


def test_a_ctrl_c_says_what_to_do_next(monkeypatch):
    """A Ctrl-C (torchrun hands it on to every process) ended a training with a bare
    ``KeyboardInterrupt``, where a SIGTERM says "resume with --resume true": under ``python -m
    monai.bundle`` its traceback now ends with the bundle's ``then`` (train.json's, evaluate.json's),
    once though Ignite hands the error to the clean-ups twice; a program running the engine (the
    experiment runner, which says its own) gets it bare."""
    import traceback

    from ignite.engine import Engine

    from pam_monai.engines import StopOnTerminate, workflow

    def step(engine, batch):
        raise KeyboardInterrupt

    for by_bundle in (True, False):
        monkeypatch.setattr(workflow, "_run_by_monai_bundle", lambda by_bundle=by_bundle: by_bundle)
        trainer = Engine(step)
        StopOnTerminate("resume with --resume true").attach(trainer)
        with pytest.raises(KeyboardInterrupt) as stopped:
            trainer.run([0], max_epochs=1)
        shown = "".join(traceback.format_exception(stopped.value)).rstrip()
        said = "pam_monai: interrupted (Ctrl-C); resume with --resume true"
        assert shown.endswith(said) == by_bundle and shown.count(said) == by_bundle, shown[-300:]


def test_mlflow_evaluation_stopped_by_sigterm_ends_its_run_killed(tmp_path):
    """evaluate.json's evaluator had no StopOnTerminate: a SIGTERM (a cluster's preemption) ended
    the evaluation at once and its MLflow run stayed RUNNING. Its handlers now stop it as training's
    do: the run is ended KILLED, the exit status is 128 + 15 and the error says to run it again,
    not to resume (no evaluation resumes). (The test's own SIGTERM handler
    stands in for the default action, which would end pytest.)"""
    mlflow = import_mlflow()
    import signal

    from ignite.engine import Engine
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.bundle.workflows import ConfigWorkflow
    from monai.handlers import MLFlowHandler

    from pam_monai.engines import StopOnTerminate, Terminated, TrackingEvery

    class ReachedTheProcess(Exception):
        pass

    def process_handler(signum, frame):
        raise ReachedTheProcess("the SIGTERM reached the process's handler: the evaluation did not catch it")

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json", "evaluate.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data")})
    parser.update({"check_data": False, "save_execute_config": False, "device": "$torch.device('cpu')"})
    ConfigWorkflow.patch_bundle_tracking(parser, DEFAULT_MLFLOW_SETTINGS)
    evaluator = Engine(lambda engine, batch: os.kill(os.getpid(), signal.SIGTERM))
    for handler in parser.get_parsed_content("validate#handlers"):
        if isinstance(handler, (StopOnTerminate, TrackingEvery, MLFlowHandler)):
            handler.attach(evaluator)
    before = signal.signal(signal.SIGTERM, process_handler)
    try:
        with pytest.raises(Terminated) as stopped:
            evaluator.run([0], max_epochs=1)
        assert signal.getsignal(signal.SIGTERM) is process_handler  # put back at the end
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert str(stopped.value) == "stopped by SIGTERM (preempted or killed); run the evaluation again"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    (found,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert found.info.status == "KILLED"


@pytest.mark.parametrize("own_db", [False, True], ids=["same_db", "own_db"])
def test_mlflow_failed_training_closes_its_validators_handler(tmp_path, caplog, own_db):
    """A training that raised ended its run FAILED and closed its own MLFlowHandler, not its
    validator's (train.json's validate#handlers; MONAI's validator settings never close it). With
    the bundles' one database the trainer's close released the store they share (MLflow keeps one
    per tracking URI), but the validator's handler kept the run: closing it later (a notebook's
    clean-up) ended the failed run FINISHED; a validator tracking into a database of its own kept
    that file open and its run RUNNING. Its run is now ended FAILED too (a run both log into, once)
    and the handler closed, and the error goes on unchanged."""
    mlflow = import_mlflow()
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts open files in /proc/self/fd")
    from ignite.engine import Engine
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MLFlowHandler, StatsHandler, ValidationHandler

    from pam_monai.engines import TrackingEvery

    dbs = [tmp_path / "mlruns.db", tmp_path / ("validate.db" if own_db else "mlruns.db")]
    settings = dict(experiment_name="train", run_name="fpa_seed0_fold0", iteration_log=False)
    case = {"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}
    validator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=[case], network=torch.nn.Identity()
    )
    validating = MLFlowHandler(tracking_uri=f"sqlite:///{dbs[1]}", **settings)  # MONAI's validator settings
    validating.attach(validator)
    error = RuntimeError("injected failure")

    def step(engine, batch):
        if engine.state.epoch == 2:  # after a validation: the validator's handler has its run
            raise error
        return {"loss": 1.0}

    trainer = Engine(step)
    StatsHandler(iteration_log=False, name=None).attach(trainer)
    ValidationHandler(interval=1, validator=validator).attach(trainer)
    TrackingEvery(params={"epochs": 2}).attach(trainer)
    training = MLFlowHandler(tracking_uri=f"sqlite:///{dbs[0]}", **settings, close_on_complete=True)
    training.attach(trainer)
    ended = []
    for handler in (training, validating):
        terminate = handler.client.set_terminated
        handler.client.set_terminated = lambda run_id, status, f=terminate: (
            ended.append(status) or f(run_id, status)
        )
    with caplog.at_level("ERROR"), pytest.raises(RuntimeError) as raised:
        trainer.run([0], max_epochs=2)
    assert raised.value is error and str(raised.value) == "injected failure"
    assert "Exception: injected failure" in caplog.text, caplog.text  # StatsHandler's line
    held = [fd for fd in Path("/proc/self/fd").iterdir() if fd.exists() and fd.resolve() in dbs]
    assert not held, f"{len(held)} handles of {dbs[1].name} left open after the failed training"
    validating.close()  # a notebook's clean-up: the run stays FAILED
    assert ended == ["FAILED"] * len(set(dbs)), ended
    for db in set(dbs):
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
        (found,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
        assert found.info.status == "FAILED", db.name


def test_tracking_every_is_inert_without_mlflow(monkeypatch):
    """Without --tracking mlflow the bundles' TrackingEvery must do nothing, MLflow not installed."""
    from ignite.engine import Engine

    from pam_monai.engines import TrackingEvery

    for module in ("mlflow", "mlflow.entities"):  # not installed: importing them fails
        monkeypatch.setitem(sys.modules, module, None)
    trainer = Engine(lambda engine, batch: None)
    TrackingEvery(every=2, params={"epochs": 2}).attach(trainer)
    assert trainer.run([0, 1], max_epochs=2).epoch == 2


def test_model_json_records_the_training_settings_and_the_best_epoch(tmp_path):
    """models/model.json named the network and the data but not how they were trained (seed,
    epochs, batch, learning rate, ...) nor the epoch of the best model: a reader could not
    reproduce the run from it."""
    run_bundle(
        "training",
        configs("brats_fpa", "train.json"),
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        **{**SMALL, "learning_rate": 0.002, "seed": 3},
    )
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["epoch"] == 1
    # inference names new images of another resolution than this (the stand-in: 1 mm)
    assert record["run"]["orientation"] == "LPS" and record["run"]["in_plane_spacing"] == [1.0, 1.0]
    assert record["run"]["training"] == {
        "seed": 3,
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 0.002,
        "weight_decay": 1e-05,
        "fold": 0,
        "data_seed": 0,
        "keep_background_fraction": 0.5,
        "deterministic": False,
        "train_transforms": [],
    }


@pytest.mark.parametrize("name", BUNDLES)
def test_model_json_records_each_train_transform_with_its_arguments(name):
    """model.json recorded train_transforms by class name only (``RandGaussianNoised``): not its
    probability, its noise, its keys. Each transform is now recorded as the config gave it,
    references and expressions as written; a value JSON cannot hold (a Python object given to
    ``monai.bundle.run``) as its repr."""
    import numpy as np

    parser = ConfigParser()
    parser.read_config(configs(name, "train.json"))
    given = [
        {"_target_": "RandGaussianNoised", "keys": ["image"], "prob": 0.2, "std": "$0.1 / 2"},
        {"_target_": "RandFlipd", "keys": "$['image', 'label']", "prob": 0.5, "spatial_axis": 0},
        {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "dtype": np.float32},
    ]
    parser["train_transforms"] = given
    parser.parse(reset=True)
    recorded = parser.get_parsed_content("training_info")["train_transforms"]
    assert recorded == [*given[:2], {**given[2], "dtype": repr(np.float32)}]
    json.dumps(recorded, allow_nan=False)


def test_bundle_root_resolves_from_the_repository_and_from_the_bundle_folder(monkeypatch):
    """The project README's commands run from the repository's root; a bundle's README's from its own folder."""
    name = BUNDLES[0]
    for cwd, config, expected in [
        (ROOT, f"bundles/{name}/configs/inference.json", f"bundles/{name}"),
        (ROOT / "bundles" / name, "configs/inference.json", "."),
    ]:
        monkeypatch.chdir(cwd)
        parser = ConfigParser()
        parser.read_config(config)
        assert parser.get_parsed_content("bundle_root") == expected
        assert (
            Path(parser.get_parsed_content("ckpt_path")).resolve()
            == ROOT / "bundles" / name / "models" / "model.pt"
        )


@pytest.mark.slow
def test_brats_2021_labels_train_with_foreground_label_3(tmp_path):
    """BraTS 2021+ labels the enhancing tumour 3 (labels {0, 1, 2, 3}): refused by default (no
    foreground), trained with --foreground_label 3 (the check accepts that year's label set)."""
    from pam_monai.data import synth

    data = synth("brats", tmp_path / "brats2021", cases=4, slices=6)
    for seg in data.rglob("*_seg.nii.gz"):
        img = nib.load(str(seg))
        labels = np.asarray(img.dataobj).copy()
        labels[labels == 4] = 3
        nib.save(nib.Nifti1Image(labels, img.affine), str(seg))
    common = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(data), **SMALL}
    with pytest.raises(Exception) as err:
        run_bundle("training", configs("brats_fpa", "train.json"), **common)
    chain = error_chain(err.value)
    assert any(
        "unexpected label values 3 (allowed 0, 1, 2, 4; BraTS 2021+ labels: pass foreground_label=3" in m
        for m in chain
    ), chain
    run_bundle("training", configs("brats_fpa", "train.json"), **common, foreground_label=3)
    assert (tmp_path / "run" / "models" / "model.pt").is_file()


def test_an_installed_package_carries_the_bundle_templates():
    """A wheel (not an editable install) has no bundles/: `python -m pam_monai bundle` and the
    experiment runner render from the templates, so every template file must be package data."""
    import fnmatch

    from setuptools.config.setupcfg import read_configuration

    patterns = read_configuration(str(ROOT / "setup.cfg"))["options"].get("package_data", {})
    templates = ROOT / "pam_monai" / "bundle_templates"
    data = [p.name for p in templates.iterdir() if p.is_file() and p.suffix != ".py"]
    assert data, "no template files found"
    missing = [
        name
        for name in data
        if not any(fnmatch.fnmatch(name, pat) for pat in patterns.get("pam_monai.bundle_templates", []))
    ]
    assert not missing, f"not package data: {missing}"


@pytest.mark.parametrize("name", ["brats_fpa", "cityscapes_rfna"])
def test_device_override_as_a_plain_string(name):
    """``--device cpu`` on the command line arrives as the string ``'cpu'``, not a ``torch.device``:
    every expression that reads ``@device`` must accept both (as MONAI's engines and
    ``Module.to`` do)."""
    for files, ids in (
        (("train.json",), ("optimizer", "network")),
        (("train.json", "multi_gpu_train.json"), ("network#device_ids",)),
        (("inference.json",), ("network",)),
    ):
        parser = ConfigParser()
        parser.read_config(configs(name, *files))
        parser["device"] = "cpu"
        parser["network_options"] = SMALL["network_options"]
        for id_ in ids:
            parser.get_parsed_content(id_)


def test_readme_load_call_gives_the_network(tmp_path, monkeypatch):
    """The bundle README's Python line, monai.bundle.load(name, bundle_dir=..., workflow_type=...),
    gives the network: MONAI reads configs/<workflow_type>.json, so a type without such a file
    ("infer": there is no infer.json) returns a bare state dict instead, with a warning."""
    import re
    import shutil

    import monai.bundle

    from pam_monai.networks import get_network

    text = (ROOT / "pam_monai" / "bundle_templates" / "README.md.in").read_text()
    workflow_type = re.search(r'monai\.bundle\.load\(name, bundle_dir=\.\.\., workflow_type="(\w+)"\)', text)[
        1
    ]
    shutil.copytree(
        ROOT / "bundles" / "brats_fpa", tmp_path / "brats_fpa", ignore=shutil.ignore_patterns("models")
    )
    (tmp_path / "brats_fpa" / "models").mkdir()
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1)
    torch.save(net.state_dict(), tmp_path / "brats_fpa" / "models" / "model.pt")
    monkeypatch.chdir(tmp_path)
    loaded = monai.bundle.load("brats_fpa", bundle_dir=str(tmp_path), workflow_type=workflow_type)
    assert isinstance(loaded, torch.nn.Module), type(loaded)


@pytest.mark.parametrize("foreground_output", [True, False])
def test_validation_and_evaluation_score_the_foreground_whatever_rfna_returns(foreground_output):
    """REFERENCE.md section 4: whatever RFNA is trained on, every metric is in foreground polarity.
    An RFNA built with ``foreground_output=False`` (the authors' raw reversed logits, reachable with
    ``--network_options``) still trains right (``loss_for``); its validation (which picks
    ``model.pt``) and evaluation must threshold the FOREGROUND logits too, not the background."""
    parser = ConfigParser()
    parser.read_config(configs("brats_rfna", "train.json"))
    parser.update(
        {
            "device": "cpu",
            "fast": False,
            "network_options": {**SMALL["network_options"], "foreground_output": foreground_output},
        }
    )
    raw = parser.get_parsed_content("network")
    scored = parser.get_parsed_content("validate#evaluator#network")
    reference = parser.get_parsed_content("network_def", instantiate=True)  # a second instance
    reference.load_state_dict(raw.state_dict())
    x = torch.randn(1, 4, 72, 72)
    with torch.no_grad():
        foreground = reference.eval()(x) if foreground_output else -reference.eval()(x)
        torch.testing.assert_close(scored.eval()(x), foreground)
    multi = ConfigParser()
    multi.read_config(configs("brats_rfna", "train.json", "multi_gpu_train.json"))
    assert "as_foreground(" in multi["validate#evaluator#network"]  # DDP needs a process group to build


# paper Table 2 (epochs, batch, lr) and REFERENCE.md section 6 (crop / size, channels, foreground)
RECIPES = {
    "brats": (80, 50, 1e-4, (160, 160), ("flair", "t1", "t1ce", "t2"), (4,)),
    "isles": (60, 80, 1e-3, (224, 224), ("CBF", "MTT", "CBV", "Tmax"), (1,)),
    "cityscapes": (100, 8, 2e-4, (128, 256), ("R", "G", "B"), tuple(range(26, 34))),
}


@pytest.mark.parametrize("name", BUNDLES)
def test_training_recipe_is_the_papers(name):
    """Each bundle trains as the paper's Table 2 and the authors' code: AdamW (weight decay 1e-5),
    soft Dice on the sigmoid pooled over the batch with smoothing 1 (on reversed labels for RFNA),
    random horizontal flips, every foreground slice plus half of the others, the paper's inputs."""
    from monai.losses import DiceLoss

    from pam_monai.networks import ReversedLabelLoss

    task, net = name.split("_")
    epochs, batch, lr, size, channels, foreground = RECIPES[task]
    parser = ConfigParser()
    parser.read_config(configs(name, "train.json"))
    parser.update({"device": "cpu", "fast": False, "network_options": SMALL["network_options"]})
    assert (parser["epochs"], parser["batch_size"], parser["learning_rate"]) == (epochs, batch, lr)
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == lr and optimizer.defaults["weight_decay"] == 1e-5
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, ReversedLabelLoss) == (net == "rfna")
    dice = loss.loss if net == "rfna" else loss
    assert type(dice) is DiceLoss and dice.sigmoid and dice.batch
    assert (dice.smooth_nr, dice.smooth_dr, dice.squared_pred, dice.jaccard) == (1.0, 1.0, False, False)
    flips = parser.get_parsed_content("train#prepare_batch")
    spec = parser.get_parsed_content("spec")
    assert flips.prob == 0.5 and flips.spatial_axis == spec.flip_axis == (-1 if task == "cityscapes" else -2)
    assert parser["keep_background_fraction"] == 0.5 and parser["threshold"] == 0.5
    assert (spec.spatial_size, spec.channels, spec.foreground_labels) == (size, channels, foreground)
    assert parser["network_def"]["out_channels"] == 1  # one logit, sigmoid outside the network


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_readme_gives_the_network_size_against_the_paper_s(name):
    """A bundle travels alone (model zoo): its README states its network's parameter count, and
    for RFNA that it is not the paper's 5.63M and why (README.md, "RFNA's parameter count")."""
    from pam_monai.networks import get_network

    task, net = name.split("_")
    channels = DATASETS[task].in_channels
    count = sum(p.numel() for p in get_network(net, in_channels=channels, out_channels=1).parameters())
    text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
    assert f"Network size: {count:,} parameters at {channels} input channels" in text
    assert ("not the paper's 5.63M" in text) == (net == "rfna")
    assert ("the paper's 4.2M is 4,231,584 at 4" in text) == (net == "fpa")


@pytest.mark.parametrize("name", BUNDLES)
def test_training_and_validation_avoid_the_authors_code_s_defects(name):
    """REFERENCE.md sections 4 and 7: the learning rate stays constant (no scheduler, no per-epoch
    ramp for RFNA: the paper has none), training slices are drawn without replacement, and
    validation and evaluation see the unperturbed inputs (no adversarial step, flips or noise)."""
    configured = []
    for files in (("train.json",), ("train.json", "evaluate.json"), ("train.json", "multi_gpu_train.json")):
        parser = ConfigParser()
        parser.read_config(configs(name, *files))
        configured.append(parser)
        text = json.dumps(parser.get()).lower()
        assert "lr_scheduler" not in text and "lrschedule" not in text and "fgsm" not in text, files
        evaluator = parser["validate#evaluator"]
        assert "prepare_batch" not in evaluator and "iteration_update" not in evaluator, files
        assert not re.search(r"rand|noise|flip", json.dumps(parser["validate#dataset"]).lower()), files
        sampler = parser["train#sampler"]
        assert sampler["_target_"] == "torch.utils.data.distributed.DistributedSampler", files
        assert "replacement" not in sampler, files
    assert configured[0]["validate#dataloader#shuffle"] is False


def test_trainer_leaves_the_loss_on_the_device_between_reads(tmp_path):
    """log_every exists so that the loss is not read on the host (a GPU wait) after every step;
    MONAI's trainer decollates its output by default, and decollating a 0-d tensor calls .item().
    The bundles' trainer keeps MONAI's per-sample lists (for handlers such as --tracking mlflow)
    with the loss a tensor in them, read by the handlers every log_every only."""
    from ignite.engine import Events

    from pam_monai.engines import loss_of

    workflow = brats_fpa_training(
        tmp_path,
        **{**SMALL, "batch_size": 1, "network_name": "unet", "crop_size": [32, 32], "val_interval": 2},
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append((type(e.state.output).__name__, type(loss_of(e.state.output)).__name__)),
    )
    losses, reads = [], []
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED, lambda e: losses.append(e.state.output["loss"].data_ptr())
    )
    real_item = torch.Tensor.item

    def item(self):  # reads of this step's loss on the host (the CPU optimiser reads its step counter)
        if losses and self.data_ptr() == losses[-1]:
            reads.append(trainer.state.iteration)
        return real_item(self)

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(torch.Tensor, "item", item))
    try:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=12), lambda e: setattr(torch.Tensor, "item", real_item)
        )
        trainer.run()
    finally:
        torch.Tensor.item = real_item
    assert len(seen) >= 12 and set(seen) == {("list", "Tensor")}
    # the default log_every 10: the loss is read at iterations 1 and 10 (log, bar), not in between
    assert sorted(set(reads)) == [1, 10], reads


@pytest.mark.slow
def test_network_def_overrides_are_recorded_as_trained(tmp_path):
    """MONAI's own override of the network's arguments (``--network_def#options``, ``--network_def#name``)
    trains that network; model.json must record it, not the untouched ``network_options`` /
    ``network_name`` ids, or evaluation, inference and ckpt_export build another network from the
    record and refuse the weights."""
    small = {k: v for k, v in SMALL.items() if k != "network_options"}
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data")}
    run_bundle(
        "training",
        configs("brats_fpa", "train.json"),
        **common,
        **small,
        **{"network_def#options": SMALL["network_options"], "network_def#name": "unet"},
    )
    record = json.loads((tmp_path / "models" / "model.json").read_text())["run"]
    assert record["network_name"] == "unet" and record["network_options"] == SMALL["network_options"]
    out = tmp_path / "predictions"
    run_bundle(
        "inferring",
        configs("brats_fpa", "inference.json"),
        bundle_root=str(tmp_path),
        input_dir=str(tmp_path / "synthetic_data"),
        output_dir=str(out),
    )
    assert sorted(out.glob("*_seg.nii.gz"))


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_readme_names_the_masks_inference_writes(name, tmp_path):
    """A model-zoo user reads the bundle's README, not infer.py: it names the mask files inference
    writes and their foreground value (CityScapes' PNGs are 0 / 255, the volumes' masks 0 / 1)."""
    import re
    import types

    from pam_monai.data import get_spec
    from pam_monai.engines import CasePredictor

    task = name.split("_")[0]
    text = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    said = re.search(r"mask is `<(?:case|frame)>(_\w+\.[\w.]+)`[^,]*, uint8, (\d+) = ", text)
    assert said, f"{name}: the README does not say which files inference writes"
    predictor = types.SimpleNamespace(spec=get_spec(task), output_dir=str(tmp_path))
    assert CasePredictor.output_path(predictor, "x").name == "x" + said[1]
    assert int(said[2]) == (255 if task == "cityscapes" else 1)


def test_multi_gpu_process_group_waits_dist_timeout_minutes(monkeypatch):
    """Process 0 checks the data and writes the slice cache while the others wait in a collective
    (and ranks wait for the slowest one's validation share): NCCL's default timeout (10 minutes)
    ended runs whose first cache or validation took longer. The bundle sets it, default 60."""
    import datetime

    import torch.distributed as dist

    seen = []

    class Stop(Exception):
        pass

    def init_process_group(*args, **kwargs):
        seen.append(kwargs.get("timeout"))
        raise Stop("process group stub")

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    for override, minutes in (({}, 60), ({"dist_timeout_minutes": 5}, 5)):
        parser = ConfigParser()
        parser.read_config(configs("brats_fpa", "train.json", "multi_gpu_train.json"))
        parser.update(override)
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("initialize")
        assert "process group stub" in error_chain(err.value), error_chain(err.value)
        assert seen.pop() == datetime.timedelta(minutes=minutes)


# what each data set's terms are called in a bundle's LICENSE; a bundle names its own data's only
DATA_TERMS = {"brats": "BraTS", "isles": "ISLES", "cityscapes": "CityScapes"}


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_licence_names_the_terms_of_its_own_data(name):
    """Weights inherit the terms of the data they are trained on: a bundle's LICENSE names its
    data set's terms, not those of the other bundles' data sets (CityScapes' non-commercial
    terms do not bind a BraTS model)."""
    task = name.split("_")[0]
    text = (ROOT / "bundles" / name / "LICENSE").read_text()
    assert "Apache License, Version 2.0" in text
    assert DATA_TERMS[task] in text, f"{name}: LICENSE does not name the {DATA_TERMS[task]} terms"
    others = [word for key, word in DATA_TERMS.items() if key != task and word in text]
    assert not others, f"{name}: LICENSE names the terms of {others}, data this bundle is not trained on"


def test_own_data_bundle_licence_names_no_paper_data_set(tmp_path):
    """A bundle made for own data (``python -m pam_monai bundle``) is not trained on BraTS, ISLES or
    CityScapes: its LICENSE points to the own data set's terms instead."""
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.data import synth

    root = synth("nnunet", tmp_path / "Dataset900_Tumour", cases=2, slices=2)
    bundle = own_data_bundle(root, "fpa", tmp_path / "tumour_fpa", check=False)
    text = (bundle / "LICENSE").read_text()
    assert not [word for word in DATA_TERMS.values() if word in text], text
    assert "own data" in text and "terms" in text, text


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_readme_states_intended_use_and_licence(name):
    """The model zoo's READMEs end with a disclaimer and a licence (spleen_ct_segmentation:
    "Disclaimer", "License"): a user reads the README, not metadata.json or LICENSE. The README
    states metadata's intended use and the licence, its data terms included."""
    import re

    root = ROOT / "bundles" / name
    text = (root / "docs" / "README.md").read_text()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    sections = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert meta["intended_use"] in sections.get("Intended use", ""), f"{name}: README has no intended use"
    licence = sections.get("License", "")
    assert "Apache License 2.0" in licence and "`LICENSE`" in licence, f"{name}: README has no licence"
    assert DATA_TERMS[name.split("_")[0]] in licence, f"{name}: README's licence leaves out the data's terms"


# pam-monai's dependencies that no bundle workflow imports: the command line's (fire) and the
# MetaImage / NRRD reader's (SimpleITK, pinned by the bundles made for such data)
NOT_IMPORTED_BY_WORKFLOWS = {"fire", "simpleitk"}


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_pins_every_package_the_workflows_import(name):
    """The model zoo installs a bundle's ``required_packages_version`` (with monai, torch and numpy
    from their own fields): every dependency of pam-monai that the workflows import is pinned
    there, SciPy (HD95) and tqdm (progress bars) in every bundle and Pillow where the data are
    PNG images (read and written by it)."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = {
        re.split(r"[<>=!~ ]", line.strip())[0].lower()
        for line in cfg["options"]["install_requires"].split("\n")
        if line.strip()
    }
    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    pinned = {k.lower() for k in meta["required_packages_version"]} | {"monai", "torch", "numpy"}
    needed = requires - NOT_IMPORTED_BY_WORKFLOWS - (set() if meta["data_type"] == "png" else {"pillow"})
    assert needed <= pinned, (
        f"{name}: metadata.json's required_packages_version leaves out {sorted(needed - pinned)}"
    )


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_carries_the_model_zoos_data_licence_file(name):
    """The model zoo asks for ``docs/data_license.txt`` when the data have licence conditions
    (its CONTRIBUTING.md; brats_mri_segmentation has one): it names the bundle's data set, where
    it comes from (metadata's ``data_source``) and its terms, and no other data set."""
    root = ROOT / "bundles" / name
    path = root / "docs" / "data_license.txt"
    assert path.is_file(), f"{name}: no docs/data_license.txt"
    text = path.read_text()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    task = name.split("_")[0]
    assert meta["data_source"] in text and DATA_TERMS[task] in text, text
    assert not [word for key, word in DATA_TERMS.items() if key != task and word in text], text
    assert "docs/data_license.txt" in (root / "LICENSE").read_text()


def test_own_data_bundle_data_licence_file_names_its_own_data(tmp_path):
    """A bundle made for own data carries ``docs/data_license.txt`` too, about that data set."""
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.data import synth

    root = synth("nnunet", tmp_path / "Dataset900_Tumour", cases=2, slices=2)
    bundle = own_data_bundle(root, "fpa", tmp_path / "tumour_fpa", check=False)
    text = (bundle / "docs" / "data_license.txt").read_text()
    assert "own data" in text and not [word for word in DATA_TERMS.values() if word in text], text


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_says_whether_the_network_sees_patches(name):
    """``is_patch_data``: a volumetric bundle's network sees an in-plane crop of each slice at the
    data's own resolution (a patch: an application that tiles larger slices with it feeds what the
    network was trained on; one that resized whole slices to it would shrink the anatomy), while
    CityScapes' sees the whole frame resized. Measured through the preprocessing: a foreground
    square in an image twice the network's size keeps its size (a patch), or shrinks (resized)."""
    from pam_monai.data.preprocess import preprocess_case

    task = name.split("_")[0]
    spec = DATASETS[task]
    h, w = spec.spatial_size
    rng = np.random.default_rng(0)
    plane = (2 * h, 2 * w, 2) if spec.volumetric else (2 * h, 2 * w)
    label = np.zeros(plane, np.int16)
    label[h - 8 : h + 8, w - 8 : w + 8] = spec.foreground_labels[0]
    image = rng.uniform(1, 255, (len(spec.channels), *plane)).astype(np.float32)
    case = {"case": "x", "image": image, "label": label, "affine": np.eye(4), "original_shape": plane}
    kept = (
        preprocess_case(spec, case)["label"][0, ..., 0 if spec.volumetric else slice(None)].sum() == 16 * 16
    )
    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    for side in ("inputs", "outputs"):
        for key, item in meta["network_data_format"][side].items():
            assert item["is_patch_data"] == kept, f"{name}: {side}.{key}.is_patch_data should be {kept}"


@pytest.mark.parametrize("name", BUNDLES)
def test_datasets_take_their_cases_from_the_model_zoos_data_ids(name, tmp_path):
    """The model zoo asks for ``train#dataset#data`` and ``validate#dataset#data`` (MONAI's
    ``train_dataset_data`` / ``val_dataset_data`` properties, through which applications such as
    MONAI FL hand a workflow its own cases): the datasets are built from them, so an override of
    those ids decides which cases train and validate; evaluation scores ``validate#dataset#data``."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=configs(name, "train.json"),
        workflow_type="train",
        logging_file=False,  # the bundle's logging.conf would set this worker's root logger for later tests
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        device="cpu",
        num_workers=0,
    )
    wf.initialize()
    data = wf.parser.get_parsed_content("data")
    one = {"train": data["train"][:1], "val": data["val"][:1]}
    wf.train_dataset_data, wf.val_dataset_data = one["train"], one["val"]
    wf.initialize()  # setting a property asks for it again
    assert [it["case"] for it in wf.train_dataset.items] == [it["case"] for it in one["train"]]
    assert [it["case"] for it in wf.val_dataset.items] == [it["case"] for it in one["val"]]
    parser = ConfigParser()
    parser.read_config(configs(name, "train.json", "evaluate.json"))
    assert parser["validate#dataset#data"] == "$@data[@eval_split]"


@pytest.mark.parametrize(
    "files", [("train.json",), ("train.json", "multi_gpu_train.json")], ids=["train", "multi_gpu"]
)
@pytest.mark.parametrize("key", ["epochs", "val_interval", "log_every"])
def test_training_schedule_is_checked_before_any_work(key, files, tmp_path):
    """``--epochs 0`` and ``--val_interval 0`` failed in Ignite ("Argument max_epochs is invalid",
    "Argument every should be integer and greater than zero"), naming neither id, and ``--epochs
    0`` only after preparing the data; ``--log_every 0`` was silently taken as 1."""
    with pytest.raises(Exception) as err:
        run_bundle("training", configs("brats_fpa", *files), bundle_root=str(tmp_path), **{**SMALL, key: 0})
    chain = error_chain(err.value)
    what = "iterations" if key == "log_every" else "epochs"
    want = f"{key}: 0 is not a number of {what} (a whole number, 1 or more): pass --{key} N"
    assert any(want in m for m in chain), chain
    assert not any(tmp_path.iterdir())  # refused before any data, cache or output folder


@pytest.mark.parametrize("compile", [False, True])
def test_compile_mode_without_compile_says_it_is_ignored(compile, tmp_path, caplog):
    """``--compile_mode reduce-overhead`` while ``compile`` is false (the CPU default) was dropped
    without a word; with ``--compile true`` it applies and nothing is said."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update(
        {"bundle_root": str(tmp_path), **SMALL, "compile": compile, "compile_mode": "reduce-overhead"}
    )
    with caplog.at_level("WARNING", logger="pam_monai"):
        parser.get_parsed_content("initialize")
    said = "compile_mode: 'reduce-overhead' is ignored because compile is false" in caplog.text
    assert said != compile, caplog.text
    assert not compile or "compile_mode" not in caplog.text
    if not compile:
        assert "pass --compile true to compile with it" in caplog.text


def test_training_that_never_validates_says_so(tmp_path, caplog):
    """``--val_interval`` above ``--epochs`` trained to the end without validating, and so without
    writing ``models/model.pt``, which evaluation and inference load, and without a word."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update({"bundle_root": str(tmp_path), **SMALL, "epochs": 2, "val_interval": 3})
    with caplog.at_level("WARNING", logger="pam_monai"):
        parser.get_parsed_content("initialize")
    assert "val_interval: 3 > epochs 2: no epoch is validated, so models/model.pt" in caplog.text
    assert "pass --val_interval 2 or less" in caplog.text


@pytest.mark.parametrize("file", ["train.json", "inference.json"])
@pytest.mark.parametrize(
    "key, value, named",
    [
        (
            "in_channels",
            3,
            "network_def#in_channels: 3, but brats images have 4 channels (flair, t1, t1ce, t2)",
        ),
        (
            "out_channels",
            2,
            "network_def#out_channels: 2, but the bundles' networks return one foreground logit",
        ),
    ],
)
def test_network_channels_edited_in_a_config_are_checked_first(file, key, value, named, tmp_path):
    """A config copy edited to another ``network_def#in_channels`` (or ``out_channels``) failed
    only at the first training step, after preparing the data, in PyTorch's convolution ("expected
    input[8, 4, 160, 160] to have 3 channels") or MONAI's Dice loss ("ground truth has different
    shape"), naming neither setting."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", file))
    parser.update({"bundle_root": str(tmp_path), f"network_def#{key}": value})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("initialize")
    chain = error_chain(err.value)
    assert any(named in m for m in chain), chain
    if file == "train.json":  # multi_gpu_train.json replaces train.json's initialize: it keeps the check
        parser.read_config(configs("brats_fpa", "train.json", "multi_gpu_train.json"))
        steps = [
            x for step in parser["initialize"] for x in (parser[step[1:]] if step.startswith("@") else [step])
        ]
        assert any("check_network_channels(" in step for step in steps)


@pytest.mark.parametrize(
    "files, typo, named",
    [
        (("train.json",), {"epoch": 2}, "--epoch: no such id in train.json (did you mean --epochs?)"),
        (
            ("train.json", "evaluate.json"),
            {"threshhold": 0.7},
            "--threshhold: no such id in train.json, evaluate.json",
        ),
        (("inference.json",), {"learning_rate": 0.1}, "--learning_rate: no such id in inference.json"),
    ],
)
def test_command_line_overrides_of_ids_no_config_has_are_refused(files, typo, named, tmp_path, monkeypatch):
    """MONAI adds an override's id to the config whether or not anything reads it: ``--epoch 2``
    (for ``--epochs``) ran the paper's 80 epochs, with no word about the typo. On the command line
    an id that none of the run's configs has is refused before any work, with the id it may mean."""
    # ids the configs have pass
    _refused_before_any_work(files, typo, named, {"threshold": 0.6, "tracking": None}, tmp_path, monkeypatch)


def test_tracking_ids_are_overridable_with_tracking_only(tmp_path, monkeypatch):
    """``--tracking mlflow --tracking_uri ...`` (MONAI's documented way to choose the tracking address)
    was refused as "--tracking_uri: no such id in train.json": the check read the configs without
    the ids MONAI's tracking adds. With ``--tracking`` they pass; without it nothing reads them."""
    import_mlflow()
    db = f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}"
    _refused_before_any_work(
        ("train.json",),
        {"tracking_uri": db},
        "--tracking_uri: no such id in train.json",
        {"tracking": "mlflow", "tracking_uri": db, "experiment_name": "mine"},
        tmp_path,
        monkeypatch,
    )
    assert (tmp_path / "elsewhere" / "runs.db").is_file()  # the address given is the one prepared
    # a settings file (--tracking my_settings.json) adds the ids of its own "configs"
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    settings = tmp_path / "elsewhere" / "my_settings.json"
    settings.write_text(json.dumps(DEFAULT_EXP_MGMT_SETTINGS["mlflow"]))
    db = f"sqlite:///{tmp_path / 'elsewhere' / 'file.db'}"
    (tmp_path / "with_file").mkdir()
    _refused_before_any_work(
        ("train.json",),
        {"tracking_uri": db},
        "--tracking_uri: no such id in train.json",
        {"tracking": str(settings), "tracking_uri": db},
        tmp_path / "with_file",
        monkeypatch,
    )
    assert (tmp_path / "elsewhere" / "file.db").is_file()


def test_tracking_handler_entries_are_not_ids_the_command_line_may_set(tmp_path, monkeypatch):
    """MONAI's tracking settings hold, beside the ids they add (``tracking_uri``, ``run_name``, ...),
    the handlers for the engines' handler lists under ``trainer``, ``validator`` and ``evaluator``
    (``handlers_id``); ``patch_bundle_tracking`` adds those to the lists, never as ids. The check
    took them for ids: ``--tracking mlflow --trainer X`` on train.json (which has no ``trainer`` id,
    its trainer is ``train#trainer``) passed, and nothing read it. Refused now, as for a settings file
    (``--tracking my_settings.json``); the ids the tracking adds still pass."""
    import_mlflow()
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    from pam_monai.engines.config_checks import _tracking_ids

    settings = tmp_path / "elsewhere" / "my_settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps(DEFAULT_EXP_MGMT_SETTINGS["mlflow"]))
    for tracking in ("mlflow", str(settings)):
        ids = _tracking_ids(tracking)
        assert not {"trainer", "validator", "evaluator"} & set(ids), ids
        assert {"tracking_uri", "experiment_name", "run_name", "save_execute_config"} <= set(ids), ids
    db = f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}"
    # (--evaluator: test_tracking_evaluator_override_is_refused_by_name)
    for handler in ("trainer", "validator"):
        (tmp_path / handler).mkdir()
        _refused_before_any_work(
            ("train.json",),
            # (the executed config MONAI writes: test_a_run_refused_with_tracking_leaves_no_executed_config)
            {"tracking": "mlflow", handler: "x", "save_execute_config": False},
            f"--{handler}: no such id in train.json",
            {"tracking": "mlflow", "tracking_uri": db, "save_execute_config": False},
            tmp_path / handler,
            monkeypatch,
        )


@pytest.mark.parametrize(
    "files, key, value",
    [
        (("train.json",), "evaluator", "X"),
        (("train.json", "evaluate.json"), "evaluator", "@validate#evaluator"),
        (("train.json",), "handlers", "X"),
        (("inference.json",), "evaluator", "X"),
    ],
)
def test_tracking_evaluator_override_is_refused_by_name(files, key, value, tmp_path, monkeypatch):
    """``--tracking mlflow --evaluator X`` on train.json (evaluate.json) failed inside MONAI's
    ``patch_bundle_tracking`` with "'str' object does not support item assignment", naming no option:
    MONAI adds its evaluator's tracking handler to the engine ``evaluator``, which these configs do
    not have (evaluation's engine is ``validate#evaluator``). Refused like ``--trainer``, naming the
    option and the ids --tracking lets one set; on inference.json (whose ``evaluator`` and
    ``handlers`` exist for MONAI's tracking only) it was taken and nothing read it."""
    import_mlflow()
    db = f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}"
    _refused_before_any_work(
        files,
        # (MONAI's executed config, eval/config_*.json, has a test of its own)
        {"tracking": "mlflow", key: value, "save_execute_config": False},
        f"--{key}: not an id to set in {', '.join(files)}: MONAI's --tracking reads evaluator and handlers",
        {"tracking": "mlflow", "tracking_uri": db, "save_execute_config": False},
        tmp_path,
        monkeypatch,
    )
    assert "--tracking_uri" in _refusal(
        files, {"tracking": "mlflow", key: value}, tmp_path / "again", monkeypatch
    )


@pytest.mark.parametrize("where", ["handler", "default", "environment"])
def test_tracking_store_is_prepared_where_the_handlers_track(where, tmp_path, monkeypatch):
    """``prepare_tracking_store`` made the database of the ``tracking_uri`` id only: with a
    ``--tracking`` settings file that writes its handlers' address into their entries, or gives
    none (MONAI's handler then tracks into ``MLFLOW_TRACKING_URI``, else mlruns.db in the working
    folder), nothing was prepared, and each handler made the tables unlocked (two runs started
    together: "duplicate column name: step"). It prepares the address MONAI's handlers will use."""
    import copy

    import_mlflow()
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    db = {"handler": tmp_path / "mine" / "runs.db", "default": tmp_path / "cwd" / "mlruns.db"}.get(
        where, tmp_path / "env" / "env.db"
    )
    db.parent.mkdir()
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    del settings["configs"]["tracking_uri"]  # no such id: the handlers have their own, or none
    for engine in settings["handlers_id"]:
        settings["configs"][engine]["tracking_uri"] = f"sqlite:///{db}" if where == "handler" else None
    monkeypatch.chdir(tmp_path / "cwd" if where == "default" else tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if where == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    workflow = brats_fpa_training(tmp_path / "bundle", tracking=settings, save_execute_config=False, **SMALL)
    workflow.initialize()
    assert db.is_file()  # made by prepare_tracking_store, before any handler opens it
    assert [p.name for p in tmp_path.rglob("*.db")] == [db.name]


def _refusal(files, overrides: dict, bundle_root, monkeypatch) -> str:
    """The message of the error that refuses ``overrides`` on the command line of a run of ``files``."""
    import monai.bundle.__main__ as cli
    from monai.bundle.scripts import create_workflow

    paths = configs("brats_fpa", *files)
    monkeypatch.setattr(sys, "argv", [cli.__file__, "run", "x", "--config_file", str(paths)])
    with pytest.raises(Exception) as err:
        create_workflow(config_file=paths, bundle_root=str(bundle_root), logging_file=False, **overrides)
    return error_chain(err.value)[-1]


@pytest.mark.parametrize(
    "refused, named",
    [
        ({"trainer": "x"}, "--trainer: no such id in train.json"),
        ({"evaluator": "X"}, "--evaluator: not an id to set in train.json"),
        ({"tracking_uri": True}, "--tracking_uri given without a value"),
        ({"epochs": 0}, "epochs: 0 is not a number of epochs"),
    ],
)
def test_a_run_refused_with_tracking_leaves_no_executed_config(refused, named, tmp_path, monkeypatch):
    """MONAI's --tracking writes the executed config (``<output_dir>/config_<time>.json``, making
    eval/) while it creates the workflow, before any check of the bundles runs: a run refused by
    them left it behind, in an eval/ of its own. It is kept aside until the checks pass: a refused
    run leaves nothing; an accepted one has it where MONAI put it (and MLflow logs it from there)."""
    import_mlflow()
    db = f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}"
    (tmp_path / "bundle").mkdir()
    _refused_before_any_work(
        ("train.json",),
        {"tracking": "mlflow", **refused},
        named,
        {"tracking": "mlflow", "tracking_uri": db},
        tmp_path / "bundle",
        monkeypatch,
    )
    (saved,) = (tmp_path / "bundle" / "eval").glob("config_*.json")
    executed = json.loads(saved.read_text())
    assert executed["tracking_uri"] == db and executed["save_execute_config"].endswith(f"/{saved.name}'")
    assert any(h.get("_target_") == "MLFlowHandler" for h in executed["train"]["handlers"])


@pytest.mark.parametrize(
    "files, flag, named, ok",
    [
        (
            ("inference.json",),
            {"amp": "maybe"},
            "--amp 'maybe': not a true/false flag; pass true or false",
            "false",
        ),
        (("train.json",), {"resume": "yes please"}, "--resume 'yes please': not a true/false flag", "false"),
        (
            ("train.json",),
            {"fast": [1]},
            "--fast [1]: not a true/false flag",
            "false",
        ),  # as_bool took it for True
        (
            ("train.json",),
            {"seed": "abc"},
            "--seed 'abc': not a whole number of 0 or more; pass e.g. --seed 0",
            "3",
        ),
        (("train.json",), {"num_workers": -1}, "--num_workers -1: not a whole number of 0 or more", 0),
    ],
)
def test_command_line_values_of_the_wrong_kind_are_refused_by_id(
    files, flag, named, ok, tmp_path, monkeypatch
):
    """``--amp maybe`` failed in ``as_bool`` deep in the run with "not a boolean flag: 'maybe'", naming
    no id, and a list was taken for True; ``--seed abc`` in int() ("invalid literal for int() with
    base 10"). Refused before any work, naming the id."""
    # a value of the right kind passes
    _refused_before_any_work(files, flag, named, {next(iter(flag)): ok}, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    "files, given, named, ok",
    [
        (("train.json",), {"dataset_dir": True, "epochs": 1}, "--dataset_dir given without a value", "data"),
        (("train.json",), {"epochs": True}, "--epochs given without a value", 1),
        (("train.json",), {"crop_size": True}, "--crop_size given without a value", None),
        (("inference.json",), {"input_dir": True}, "--input_dir given without a value", "in"),
    ],
)
def test_command_line_ids_given_without_a_value_are_refused(files, given, named, ok, tmp_path, monkeypatch):
    """``--dataset_dir --epochs 1``: MONAI's command line made ``dataset_dir`` True, and the run died
    with "TypeError: expected str, bytes or os.PathLike object, not bool" quoting config code.
    Refused before any work, naming the id and saying to give it a value."""
    key = next(iter(given))
    accepted = {**given, key: str(tmp_path / ok) if isinstance(ok, str) else ok}
    _refused_before_any_work(files, given, f"{named} (MONAI read it as True", accepted, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    "files, key, ok",
    [
        (("train.json",), "tracking_uri", None),
        (("inference.json",), "experiment_name", "mine"),
        (("inference.json",), "run_name", "first"),
    ],
)
def test_tracking_ids_given_without_a_value_are_refused(files, key, ok, tmp_path, monkeypatch):
    """``--tracking mlflow --tracking_uri --epochs 1``: the ids ``--tracking`` adds (those the configs
    lack: inference.json has no run name) were left out of the check for ids given without a value,
    so MLflow got True for an address or a name and failed inside MONAI, naming no flag. Refused like
    the configs' ids; ``--save_execute_config`` alone (True: MONAI's default) still passes."""
    import_mlflow()
    value = ok or f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}"
    _refused_before_any_work(
        files,
        # (the executed config MONAI writes: test_a_run_refused_with_tracking_leaves_no_executed_config)
        {"tracking": "mlflow", key: True, "save_execute_config": False},
        f"--{key} given without a value (MONAI read it as True",
        {"tracking": "mlflow", key: value, "save_execute_config": True},
        tmp_path,
        monkeypatch,
    )


def test_true_false_ids_may_stand_alone_on_the_command_line(tmp_path, monkeypatch):
    """An id given without a value is True: for the true/false ids (a bool default, ``as_bool(@id)``,
    a boolean expression such as ``drop_last``'s) that is a value, not a missing one."""
    import monai.bundle.__main__ as cli
    from monai.bundle.scripts import create_workflow

    paths = configs("brats_fpa", "train.json")
    monkeypatch.setattr(sys, "argv", [cli.__file__, "run", "x", "--config_file", str(paths)])
    flags = {"deterministic": True, "drop_last": True, "plane_kernels": True, "synthetic_stand_in": True}
    common = {
        "bundle_root": str(tmp_path),
        "logging_file": False,
        "network_options": SMALL["network_options"],
    }
    workflow = create_workflow(config_file=paths, **common, **flags)
    assert workflow.parser.get_parsed_content("drop_last") is True


@pytest.mark.parametrize(
    "key, value, parsed",
    [
        ("seed", "$1 + 1", 2),
        ("num_workers", "$min(1, 2)", 1),
        ("fold", "@data_seed", 0),
        ("resume", "$False", False),
    ],
)
def test_command_line_expressions_and_references_pass_the_kind_check(
    key, value, parsed, tmp_path, monkeypatch
):
    """MONAI resolves an override that is an expression or a reference (``--seed '$1 + 1'``,
    ``--fold @data_seed``) before anything reads it; the kind check of the command-line values took
    the text itself for the value and refused it ("not a whole number", "not a true/false flag")."""
    import monai.bundle.__main__ as cli
    from monai.bundle.scripts import create_workflow

    paths = configs("brats_fpa", "train.json")
    monkeypatch.setattr(sys, "argv", [cli.__file__, "run", "x", "--config_file", str(paths)])
    common = {
        "bundle_root": str(tmp_path),
        "logging_file": False,
        "network_options": SMALL["network_options"],
    }
    workflow = create_workflow(config_file=paths, **common, **{key: value})
    assert workflow.parser.get_parsed_content(key) == parsed


@pytest.mark.parametrize("file", ["train.json", "inference.json"])
@pytest.mark.parametrize(
    "device, named",
    [
        ("gpu", "device: 'gpu' is not a device PyTorch knows (e.g. cpu, cuda, cuda:1): pass --device"),
        ("cuda", "device: 'cuda', but this PyTorch finds no CUDA GPU: pass --device cpu"),
        ("cuda:3", "device: 'cuda:3', but this PyTorch finds no CUDA GPU: pass --device cpu"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_by_its_id(file, device, named, tmp_path, monkeypatch):
    """``--device gpu`` and, on a machine without CUDA, ``--device cuda`` failed in PyTorch ("Expected
    one of cpu, cuda, ... device type at start of device string: gpu", "Torch not compiled with CUDA
    enabled") naming no id, while the data loader was being built."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", file))
    parser.update({"bundle_root": str(tmp_path), "device": device})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("initialize")
    chain = error_chain(err.value)
    assert any(named in m for m in chain), chain
    assert not any(tmp_path.iterdir())  # refused before any output folder


def test_weights_renamed_without_their_record_are_named_with_the_record_to_rename(tmp_path):
    """``--ckpt_path models/fold1.pt`` for weights copied as ``fold1.pt`` beside their ``model.json``:
    the record is read as ``fold1.json`` (the weights' own name), so none was found, the network was
    built with the bundle's defaults and the weights were refused as not fitting it, with no word
    of the record that would have built the right one."""
    from pam_monai.engines import check_weights
    from pam_monai.networks import get_network

    small = get_network("fpa", in_channels=4, out_channels=1, options=SMALL["network_options"])
    torch.save(small.state_dict(), tmp_path / "fold1.pt")
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(
        ValueError, match="no record of them here: training writes it as model.json beside"
    ) as err:
        check_weights(tmp_path / "fold1.pt", get_network("fpa", in_channels=4, out_channels=1))
    assert "rename weights with their record (fold1.pt with fold1.json)" in str(err.value)


@pytest.mark.parametrize("value, want", [("false", False), ("true", True)])
def test_inference_amp_is_an_id_of_its_own(value, want, tmp_path, monkeypatch):
    """Inference's bf16 autocast on a GPU was fixed to ``torch.cuda.is_available()`` inside the
    predictor: ``--amp false`` (the fast path's id, as training and evaluation take it) could not
    turn it off for a model whose masks differ in bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default: on where CUDA is
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "inference.json"))
    assert parser.get_parsed_content("predictor#amp") is True
    parser["amp"] = value
    assert parser.get_parsed_content("predictor#amp") is want


@pytest.mark.parametrize(
    "setting, named",
    [
        (
            {"learning_rate": "1e-3"},
            "learning_rate: '1e-3' is not a number above 0: pass --learning_rate 0.001",
        ),
        ({"weight_decay": -1}, "weight_decay: -1 is not a number of 0 or more: pass --weight_decay 1e-05"),
        ({"batch_size": "8"}, "batch_size: '8' is not a whole number of 1 or more: pass --batch_size 8"),
        (
            {"network_options": "{features: [8]}"},
            "network_options: '{features: [8]}' is not a mapping of options",
        ),
    ],
)
def test_training_settings_of_another_type_are_refused_by_their_id(setting, named, tmp_path):
    """A config copy edited with a quoted number (``"learning_rate": "1e-3"``) or a command line whose
    options Fire could not parse (``--network_options "{features: [8]}"`` arrives as a string)
    failed in AdamW ("'<=' not supported between instances of 'float' and 'str'"), the DataLoader
    ("got batch_size=8") or the network factory ("'str' object is not a mapping"), naming no id."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update({"bundle_root": str(tmp_path), **setting})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("initialize")
    chain = error_chain(err.value)
    assert any(named in m for m in chain), chain
    assert not any(tmp_path.iterdir())  # refused before any output folder


def test_training_with_evaluate_json_in_the_configs_is_refused(tmp_path):
    """``run training`` with ``evaluate.json`` after ``train.json`` (the evaluation's command with
    another workflow) trained, and at every validation loaded ``models/model.pt`` into the network
    being trained (evaluate.json's CheckpointLoader) and scored the test split instead of the
    validation split, without a word."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json", "evaluate.json"))
    parser.update({"bundle_root": str(tmp_path), **SMALL})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("training")
    chain = error_chain(err.value)
    assert any("training: evaluate.json is in --config_file" in m for m in chain), chain
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    assert "train#trainer" in parser["training"][-1]  # train.json alone trains (after taking its lock)


@pytest.mark.parametrize(
    "files", [("train.json",), ("inference.json",), ("train.json", "multi_gpu_train.json")]
)
def test_every_workflow_first_shows_an_errors_cause_last(files):
    """MONAI wraps a config expression's error in "Failed to evaluate ConfigExpression: ..." quoting
    the expression, so the last lines of `python -m monai.bundle run` showed config code and the
    message naming the file and the fix sat mid-traceback; each workflow first installs the hook
    that repeats the cause last."""
    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", *files))
    assert parser["initialize"][0] == "$pam_monai.engines.show_error_cause()"


def test_show_error_cause_ends_the_traceback_with_the_cause(monkeypatch, capsys, tmp_path):
    """...and names it in torchrun's summary of the failure (its error file), which said only "To
    enable traceback see: ..." for the process that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from pam_monai.engines import show_error_cause

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))  # what torchrun gives each process
    shown = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, tb: shown.append(error))
    monkeypatch.setattr(sys, "argv", [str(Path(pytest.__file__).parent / "__main__.py")])
    show_error_cause()  # not monai.bundle's main (a notebook, the tests, the runner): left alone
    assert not getattr(sys.excepthook, "shows_cause", False)
    monkeypatch.setattr(sys, "argv", ["/site-packages/monai/bundle/__main__.py", "run", "training"])
    show_error_cause()
    show_error_cause()  # once: evaluation runs train.json's initialize too
    assert sys.excepthook.shows_cause
    try:
        try:
            raise ValueError("brats: /data/x holds dataset.json ...: add --task nnunet")
        except ValueError as e:
            raise RuntimeError(
                "Failed to evaluate ConfigExpression: $pam_monai.engines.prepare_data(...)"
            ) from e
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
        wrapped = e
    assert shown == [wrapped]  # the usual traceback first
    last = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert last == "ValueError: brats: /data/x holds dataset.json ...: add --task nnunet"
    summary = ProcessFailure(
        local_rank=0, pid=1, exitcode=1, error_file=str(error_file)
    )  # torchrun's reading
    assert isinstance(summary.message, dict) and summary.message["message"] == last, summary.message
    # a process whose collective broke when another failed first: the summary names the first error
    from pam_monai.engines import StopEveryProcessOnError

    monkeypatch.setattr(StopEveryProcessOnError, "failed_first_elsewhere", "process 1: ValueError: bad step")
    sys.excepthook(type(wrapped), wrapped, wrapped.__traceback__)
    summary = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))
    assert summary.message["message"] == f"process 1: ValueError: bad step; this process failed then, {last}"
    shown_last = summary.message["extraInfo"]["py_callstack"].rstrip().splitlines()[-1]
    assert shown_last == "(this process failed after process 1: ValueError: bad step)"


@pytest.mark.parametrize("name", BUNDLES)
def test_readme_commands_name_files_of_the_bundle_as_run_from_its_folder(name):
    """A bundle shared alone (the MONAI model zoo) is a folder without the project around it: its
    README's commands are followed as written from that folder, so every config, weight and export
    file they name is relative to it (they named ``bundles/<name>/configs/...``, a path of the
    project's checkout that neither the bundle's folder nor the one above it has)."""
    root = ROOT / "bundles" / name
    text = (root / "docs" / "README.md").read_text()
    commands = " ".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)).replace("\\\n", " ")
    # the zip is made from the folder above the bundle (its paths start with the bundle's name there)
    commands = re.sub(rf"\(cd \.\. && zip -r {name}\.zip {name} [^)]*\)", "", commands)
    paths = re.findall(r"[^\s'\"\[,]*(?:configs|models)/[\w.]+\.\w+", commands)
    assert len(paths) >= 10, commands
    outside = sorted({p for p in paths if not p.startswith(("configs/", "models/"))})
    assert not outside, f"{name}: README commands name files outside the bundle's folder: {outside}"
    missing = sorted({p for p in paths if p.startswith("configs/") and not (root / p).is_file()})
    assert not missing, f"{name}: README commands name configs the bundle lacks: {missing}"
    assert f"`cd bundles/{name}`" in text, f"{name}: README does not say where a clone runs them"


@pytest.mark.parametrize("name", BUNDLES)
def test_readme_commands_install_extras_without_the_project_s_checkout(name):
    """The README's commands run from the bundle's folder, where ``pip install -e ".[mlflow]"``
    would install the bundle's folder, which is no Python project: MLflow is named with the
    requirement of setup.cfg's ``mlflow`` extra instead."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mlflow = " ".join(f'"{r}"' for r in cfg["options.extras_require"]["mlflow"].split())
    text = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    commands = " ".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    assert "pip install -e" not in commands, f"{name}: README installs the project from the bundle's folder"
    assert f"python -m pip install {mlflow}" in commands, f"{name}: README does not install {mlflow}"


def test_weights_copied_in_without_their_record_ask_for_the_record_not_a_rename(tmp_path):
    """A recipient who put a shared ``model.pt`` alone into ``models/`` (no ``model.json``) was told to
    "rename weights with their record (model.pt with model.json)": both already have the names
    that are read, and what is missing is the record itself, to be copied in beside the weights."""
    from pam_monai.engines import check_weights
    from pam_monai.networks import get_network

    small = get_network("fpa", in_channels=4, out_channels=1, options=SMALL["network_options"])
    torch.save(small.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="pass the network_name and network_options") as err:
        check_weights(tmp_path / "model.pt", get_network("fpa", in_channels=4, out_channels=1))
    message = str(err.value)
    assert "rename" not in message, message
    assert "no model.json beside model.pt" in message and "copy in the model.json" in message, message


@pytest.mark.parametrize("name", ["isles_rfna", "brats_fpa"])
def test_readme_own_data_bundle_command_runs_as_written(name, tmp_path, monkeypatch):
    """The README's "Own data" line, ``python -m pam_monai bundle --dataset_dir DIR --output
    NAME_<network>``, was refused in the RFNA bundles ("the bundle folder's name must end in _fpa"):
    ``--network`` defaults to fpa, so the line must name its network; run as written (with --no_check)."""
    import shlex

    from pam_monai.cli import main
    from pam_monai.data import synth

    own = synth("nnunet", tmp_path / "Dataset900_Own", cases=2, slices=4)
    text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
    command = re.search(r"`python -m pam_monai (bundle [^`]*)`", text)[1]
    args = [{"DIR": str(own)}.get(a, a).replace("NAME_", "lesion_") for a in shlex.split(command)]
    monkeypatch.chdir(tmp_path)
    main([*args, "--no_check"])
    train = json.loads((tmp_path / f"lesion_{name.split('_')[1]}" / "configs" / "train.json").read_text())
    assert train["network_name"] == name.split("_")[1]


@pytest.mark.parametrize("name", BUNDLES)
def test_readme_gives_the_data_layout_it_reads(name):
    """A bundle shared alone has no project README beside it: its README said only "the folder of
    the published layout (see the project README)"; it gives the layout its reader expects."""
    import importlib

    layout = importlib.import_module(f"pam_monai.data.{name.split('_')[0]}").LAYOUT
    text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
    assert f"`{layout}`" in text, f"{name}: README does not give the layout {layout}"


def tensorboard_only(parser: ConfigParser, handlers: str) -> None:
    """Keep only the TensorBoard handlers of the ``handlers`` list (as the template has them)."""
    parser[handlers] = [h for h in parser[handlers] if isinstance(h, dict) and "TensorBoard" in h["_target_"]]


def log_once(handlers) -> None:
    """Have each TensorBoard handler of ``handlers`` log a scalar, as a run does: their writers
    (a flush thread each) are made when they first write."""
    from monai.handlers import TensorBoardHandler

    for handler in handlers:
        if isinstance(handler, TensorBoardHandler):
            handler._writer.add_scalar("logged", 0.0, 1)


def test_training_finalize_closes_its_tensorboard_writers(tmp_path):
    """MONAI's TensorBoardStatsHandler never closes its SummaryWriter: each ``monai.bundle.run``
    training in one Python session (a notebook) left two writers and their flush threads alive to
    the end of the session. train.json (and multi_gpu_train.json) finalize closes them."""
    import threading

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update({"bundle_root": str(tmp_path)})
    tensorboard_only(parser, "train#handlers")
    tensorboard_only(parser, "validate#handlers")
    before = set(threading.enumerate())
    writers = parser.get_parsed_content("train#handlers") + parser.get_parsed_content("validate#handlers")
    assert len(writers) == 2 and set(threading.enumerate()) - before == set()  # none made before they log
    log_once(writers)
    assert len(set(threading.enumerate()) - before) == 2
    parser.get_parsed_content("finalize")
    assert set(threading.enumerate()) - before == set()
    train, multi_gpu = (
        json.loads(Path(f).read_text())["finalize"]
        for f in configs("brats_fpa", "train.json", "multi_gpu_train.json")
    )
    assert multi_gpu[0] == train[0]


def test_evaluation_finalize_makes_no_training_handler(tmp_path):
    """evaluate.json's finalize closes its own handlers' writers only: train.json's would build
    the training handlers (the training data and loader among them) just to close them."""
    import threading

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json", "evaluate.json"))
    parser.update({"bundle_root": str(tmp_path)})
    parser["validate#handlers"] = [{"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir"}]
    before = set(threading.enumerate())
    parser.get_parsed_content("validate#handlers")
    parser.get_parsed_content("finalize")
    assert set(threading.enumerate()) - before == set()  # a writer added to evaluate.json is closed too
    resolved = parser.ref_resolver.resolved_content
    assert "train#handlers" not in resolved and not any(k.startswith("train#") for k in resolved)


@pytest.mark.parametrize("stats", [True, False])
def test_training_that_raises_closes_its_tensorboard_writers(tmp_path, stats):
    """``monai.bundle.run`` finalizes (closes the writers) only after a training that ended: one
    that raised (an error, Ctrl-C) in a notebook left the trainer's and the validation's writers and
    their flush threads alive. The trainer's EXCEPTION_RAISED closes them, and the error (raised by
    MONAI's StatsHandler, or alone by the closing handler) reaches the caller once."""
    import threading

    from ignite.engine import Engine

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')"})
    kept = ("ValidationHandler", "TensorBoardStatsHandler", "CloseWritersOnError") + (
        ("StatsHandler",) if stats else ()
    )
    parser["train#handlers"] = [h for h in parser["train#handlers"] if h["_target_"].endswith(kept)]
    tensorboard_only(parser, "validate#handlers")
    parser["validate#evaluator#val_data_loader"] = "$[]"  # no data: the evaluator is made, never run
    parser["validate#evaluator#epoch_length"] = 1
    before = set(threading.enumerate())
    handlers = parser.get_parsed_content("train#handlers")
    assert set(threading.enumerate()) - before == set()  # the writers are made when they first log
    raised = []

    def step(engine, batch):
        log_once(handlers + parser.get_parsed_content("validate#handlers"))
        raised.append(len(set(threading.enumerate()) - before))  # the trainer's and the validation's writer
        raise RuntimeError("training failed")

    trainer = Engine(step)
    for handler in handlers:
        handler.attach(trainer)
    with pytest.raises(RuntimeError, match="training failed"):
        trainer.run([0], max_epochs=1)
    assert raised == [2]
    assert set(threading.enumerate()) - before == set()


def test_handlers_made_part_way_leave_no_tensorboard_writer(tmp_path):
    """The handler lists are made before the run; when a handler after the TensorBoard ones failed
    to be made (here a mistyped ``_target_``; an optional package missing), the writers already
    made (the validation's, through the ValidationHandler, and the trainer's) were never closed:
    no engine ran, so neither CloseWritersOnError nor ``finalize`` did, and their flush threads
    stayed for the rest of the session. The bundles' handlers make their writers when they log."""
    import threading

    parser = ConfigParser()
    parser.read_config(configs("brats_fpa", "train.json"))
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')"})
    kept = ("ValidationHandler", "TensorBoardStatsHandler")
    parser["train#handlers"] = [h for h in parser["train#handlers"] if h["_target_"].endswith(kept)] + [
        {"_target_": "pam_monai.engines.ProgresBar"}
    ]
    tensorboard_only(parser, "validate#handlers")
    parser["validate#evaluator#val_data_loader"] = "$[]"
    before = set(threading.enumerate())
    with pytest.raises(ModuleNotFoundError, match="ProgresBar"):
        parser.get_parsed_content("train#handlers")
    assert set(threading.enumerate()) - before == set()


def test_lazy_tensorboard_handler_takes_monais_arguments_in_monais_order(tmp_path):
    """pam_monai.engines.TensorBoardStatsHandler stands in for MONAI's in configs and code: its
    arguments, positional ones included, mean what they mean for MONAI's (a third positional
    argument, iteration_log, was refused), and its writer comes with the first log only."""
    import inspect

    from monai.handlers import TensorBoardStatsHandler as Monai

    from pam_monai.engines import TensorBoardStatsHandler

    handler = TensorBoardStatsHandler(None, str(tmp_path), False, True)
    assert handler.iteration_log is False and handler.epoch_log is True
    assert handler._made is None and not list(tmp_path.iterdir())  # no writer, no event file yet
    handler._writer.add_scalar("x", 1.0, 1)
    handler.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    ours = list(inspect.signature(TensorBoardStatsHandler.__init__).parameters)[1:3]
    assert ours == list(inspect.signature(Monai.__init__).parameters)[1:3]


@pytest.mark.parametrize("name", BUNDLES)
def test_mlflow_runs_are_named_by_network_seed_and_fold(name):
    """``--tracking mlflow`` named every run ``run_<timestamp>`` in one ``monai_experiment`` for
    every bundle: the bundles name their experiment by task and each run by network, seed and fold
    (evaluation's too), which MONAI's tracking settings keep (they fill in missing ids only)."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
    from monai.bundle.workflows import ConfigWorkflow

    task = name.split("_")[0]
    for files, run_name in (
        (("train.json",), "unet_seed3_fold0"),
        (("train.json", "evaluate.json"), "unet_seed3_fold0_evaluate"),
    ):
        parser = ConfigParser()
        parser.read_config(configs(name, *files))
        parser["network_name"], parser["seed"] = "unet", 3
        parser["save_execute_config"] = False  # else MONAI writes the config into the bundle's eval/
        ConfigWorkflow.patch_bundle_tracking(parser, DEFAULT_MLFLOW_SETTINGS)
        assert parser.get_parsed_content("run_name") == run_name
        assert parser.get_parsed_content("experiment_name") == f"pam_monai_{task}"


def test_best_checkpoint_follows_a_renamed_validation_prefix():
    # --validate#metrics#prefix renames the validation metrics; the best-model checkpoint must read
    # the renamed IoU (a hard-coded "val_iou" was a KeyError at the first validation)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "brats_fpa" / "configs" / "train.json"))
    assert parser.get_parsed_content("validate#handlers#1#metric_name") == "val_iou"
    parser["validate#metrics#prefix"] = "my_"
    parser.parse()
    assert parser.get_parsed_content("validate#handlers#1#metric_name") == "my_iou"


def _refused_before_any_work(
    files, overrides: dict, named: str, accepted: dict, tmp_path, monkeypatch
) -> None:
    """``overrides`` on the command line of a run of ``files`` are refused before any work, with a
    message holding ``named``; ``accepted`` instead creates the workflow."""
    import monai.bundle.__main__ as cli
    from monai.bundle.scripts import create_workflow

    paths = configs("brats_fpa", *files)
    monkeypatch.setattr(sys, "argv", [cli.__file__, "run", "x", "--config_file", str(paths)])
    common = {
        "bundle_root": str(tmp_path),
        "logging_file": False,
        "network_options": SMALL["network_options"],
    }
    with pytest.raises(Exception) as err:
        create_workflow(config_file=paths, **common, **overrides)
    chain = error_chain(err.value)
    assert any(named in m for m in chain), chain
    assert not any(tmp_path.iterdir())  # refused before any data, cache or output folder
    create_workflow(config_file=paths, **common, **accepted)


def test_import_mlflow_fails_on_an_installed_mlflow_that_does_not_import(tmp_path, monkeypatch):
    """``import_mlflow`` skipped the MLflow tests on any ImportError (``pytest.importorskip``): an
    installed MLflow broken by a dependency (a protobuf it cannot use) skipped them in a CI whose
    MLflow is new enough, hiding the failure. A broken MLflow now fails them; only a missing or too
    old one (or MONAI below the extra's) skips."""
    from monai import __version__ as monai_version
    from packaging.version import Version

    if Version(monai_version) < Version("1.6.1"):
        pytest.skip("import_mlflow skips below monai 1.6.1 before it reads MLflow")
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "__init__.py").write_text("raise ImportError('a dependency it cannot use')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        import_mlflow()
    except pytest.skip.Exception as e:
        pytest.fail(f"a broken MLflow skipped the test ({e})")
    except ImportError as e:
        assert "a dependency it cannot use" in str(e)
    else:
        pytest.fail("a broken MLflow imported")


RACE_WORKER = """
import sys, time
from pathlib import Path

import mlflow
from pam_monai.engines import prepare_tracking_store

folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    uri = f"sqlite:///{folder / f'mlruns{r}.db'}"
    (folder / f"ready{r}_{name}").touch()
    while not (folder / f"go{r}").exists():
        time.sleep(0.002)
    try:
        prepare_tracking_store(uri)  # as the bundles' initialize, before the handler's client
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run("0", run_name=name)
        client.log_metric(run.info.run_id, "loss", 1.0, step=0)
        print(f"ok {r}", flush=True)
    except Exception as e:
        print(f"failed {r}: {type(e).__name__}: {str(e)[:200]}", flush=True)
"""


def test_mlflow_new_database_made_by_two_runs_at_once_loses_no_run(tmp_path):
    """Two runs that start together into one new SQLite database (two evaluations, a grid) both
    made its tables: one failed ("duplicate column name: step"), its run lost (without the lock,
    every one of 15 rounds failed here)."""
    mlflow = import_mlflow()
    rounds, names = 2, ("a", "b")
    script = tmp_path / "worker.py"
    script.write_text(RACE_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), name, str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name in names
    ]
    try:
        for r in range(rounds):  # release both together, once both wait
            deadline = time.monotonic() + 30
            while not all((tmp_path / f"ready{r}_{n}").exists() for n in names):
                assert time.monotonic() < deadline, "the workers did not start"
                assert all(w.poll() is None for w in workers), [w.communicate()[0] for w in workers]
                time.sleep(0.005)
            (tmp_path / f"go{r}").touch()
        outputs = [w.communicate(timeout=60)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    done = [sorted(line for line in out.splitlines() if line.startswith("ok ")) for out in outputs]
    failed = [line for out in outputs for line in out.splitlines() if line.startswith("failed ")]
    assert not failed and done == [[f"ok {r}" for r in range(rounds)]] * len(names), (failed, outputs)
    for r in range(rounds):
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / f'mlruns{r}.db'}")
        assert sorted(x.info.run_name for x in client.search_runs(["0"])) == list(names)
    assert (tmp_path / "mlruns0.db.lock").is_file()


def test_mlflow_database_made_before_the_handlers_from_the_workflows_tracking_uri(tmp_path, monkeypatch):
    """The bundles' initialize makes the database (``prepare_tracking_store()``) from the running
    workflow's ``tracking_uri`` (``MLFLOW_TRACKING_URI`` first, as MONAI's handler), before the
    training makes its tracking handlers; without tracking it makes nothing, the variable set or
    not."""
    import_mlflow()
    from monai.bundle import ConfigWorkflow

    for name in ("train.json", "multi_gpu_train.json"):
        initialize = json.loads((ROOT / "bundles" / "brats_fpa" / "configs" / name).read_text())["initialize"]
        assert any("prepare_tracking_store()" in step for step in initialize), name
    config = tmp_path / "configs" / "config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "imports": ["$import pam_monai"],
                "save_execute_config": False,
                "initialize": ["$pam_monai.engines.prepare_tracking_store()"],
                "run": [],
            }
        )
    )
    db, env_db = tmp_path / "track" / "mlruns.db", tmp_path / "env" / "mlruns.db"
    tracking = {"configs": {"tracking_uri": f"sqlite:///{db}"}, "handlers_id": {}}
    for settings, env, made in (
        (None, None, None),
        (None, env_db, None),
        (tracking, None, db),
        (tracking, env_db, env_db),
    ):
        if env is None:
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env}")
        workflow = ConfigWorkflow(
            config_file=str(config), logging_file=False, workflow_type=None, tracking=settings
        )
        workflow.initialize()
        assert [p for p in (db, env_db) if p.is_file()] == ([made] if made else []), (settings, env)
        for p in (db, env_db):
            p.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schema not present")
@pytest.mark.parametrize("name", ["brats_fpa"])
def test_readme_share_commands_verify_offline_and_zip_only_what_a_recipient_needs(name, tmp_path):
    """The README gave no way to check a bundle before sharing it: MONAI's ``verify_metadata`` with no
    ``--filepath`` downloads the schema (a crash offline), and the project README's ``tar`` kept
    ``synthetic_data/``, ``predictions/`` and the bundle's ``data/``. Its "Share" commands run as
    written from a copy of the bundle (the schema's path filled in, no network): the metadata and
    the network's shapes verify, and the zip holds the bundle's folder without what training,
    evaluation and inference left there."""
    import shlex
    import shutil
    import zipfile

    text = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    section = text.split("\n## Share", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)[1].replace("\\\n", " ")
    commands = [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    bundle = tmp_path / "shared models" / name  # a space in the path, as a user's folder may have
    shutil.copytree(ROOT / "bundles" / name, bundle, ignore=shutil.ignore_patterns(*LEFTOVERS, "models"))
    for leftover in LEFTOVERS:
        (bundle / leftover).mkdir(parents=True, exist_ok=True)
        (bundle / leftover / "x.nii.gz").write_bytes(b"x")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"x")  # not read: verify_net_in_out builds the network
    record = {"task": name.split("_")[0], "network_name": name.split("_")[1], "network_options": {}}
    (bundle / "models" / "model.json").write_text(
        json.dumps({"metric": "val_iou", "value": 0.5, "run": record})
    )
    for dropped in ("checkpoint_last.pt", "model.ts.partial"):
        (bundle / "models" / dropped).write_bytes(b"x")
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        no_proxy="*",
        http_proxy="http://0.0.0.0:9",
        https_proxy="http://0.0.0.0:9",
    )
    ran = []
    for command in commands:
        if " zip " in f" {command}" and shutil.which("zip") is None:
            continue
        command = command.replace("/path/to/meta_schema_20240725.json", shlex.quote(str(SCHEMA)))
        done = subprocess.run(["bash", "-c", command], cwd=bundle, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        ran.append(command)
    assert any("verify_metadata" in c and "--filepath" in c for c in ran), ran
    assert any("verify_net_in_out" in c for c in ran), ran
    if shutil.which("zip"):
        with zipfile.ZipFile(bundle.parent / f"{name}.zip") as z:
            files = sorted(n for n in z.namelist() if not n.endswith("/"))
        want = sorted(
            f"{name}/{p.relative_to(ROOT / 'bundles' / name).as_posix()}"
            for p in (ROOT / "bundles" / name).rglob("*")
            if p.is_file()
            and p.relative_to(ROOT / "bundles" / name).parts[0] in ("configs", "docs", "LICENSE")
        )
        assert files == sorted([*want, f"{name}/models/model.json", f"{name}/models/model.pt"]), files


# what training, evaluation and inference leave in a bundle's folder for themselves (and its own data)
LEFTOVERS = ("cache", "eval", "synthetic_data", "predictions", "data")
