"""The documentation's checkable claims against the code: statements that went stale once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, resolve_dotted

from pam_monai.bundle_templates.build import bundle_names


def sentences(text: str, word: str) -> list[str]:
    """The sentences of ``text`` (line breaks joined) that hold ``word``."""
    flat = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.])\s+", flat) if word in s]


@pytest.mark.parametrize("name", bundle_names())
def test_bundle_readme_says_what_a_resume_with_another_process_count_does(name):
    """The bundles' README said "A resume needs the same number of processes", but a resume with
    another count and the same epoch length (batch_size scaled) continues with a WARNING
    (tests/test_reliability.py::test_resume_with_more_processes_keeps_each_rank_its_own_flips);
    only another epoch length is refused."""
    text = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    said = " ".join(sentences(text, "resume with another number of processes"))
    assert "epoch length" in said and "WARNING" in said, said
    assert "needs the same number of processes" not in text


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (("evaluate.json",), "it was read without train.json"),
        (("evaluate.json", "train.json"), "train.json came after it in --config_file"),
    ],
)
def test_evaluate_json_without_train_json_before_it_names_the_command(files, problem):
    """``run evaluating --config_file .../evaluate.json`` without train.json stopped in MONAI's
    config reader with ``KeyError: 'query key: validate'`` (its ``validate#...`` keys edit
    train.json's validation), and with train.json after it the edits were lost: its ``+validate``
    keys now let it be read alone, and its first step names the mistake and the command to run."""
    from monai.bundle import ConfigWorkflow

    configs = ROOT / "bundles" / "brats_fpa" / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / f) for f in files],
        logging_file=False,
        workflow_type="eval",
        run_id="evaluating",
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as err:
        workflow.run()
    cause = str(err.value.__cause__)
    assert cause.startswith(f"evaluate.json: {problem}"), cause
    given = f"'{configs / 'train.json'}','{configs / 'evaluate.json'}'"  # the folder given, in order
    assert f'python -m monai.bundle run evaluating --config_file "[{given}]"' in cause, cause
    for name in bundle_names():
        text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
        assert "`evaluate.json` is layered on `train.json` and must come after it in `--config_file`" in text
        assert "with train.json after it, evaluation stops at its first step" in text


@pytest.mark.parametrize("files", [("evaluate.json",), ("evaluate.json", "train.json")])
def test_evaluate_json_refusal_suggests_the_config_paths_given(files, monkeypatch):
    """The refusal always suggested ``['configs/train.json','configs/evaluate.json']``, which does
    not run from the repository root, where the README runs ``--config_file
    "['bundles/brats_fpa/configs/train.json','bundles/brats_fpa/configs/evaluate.json']"``: it
    suggests the paths given (train.json beside evaluate.json if missing), in the working order."""
    import ast

    import monai.bundle.__main__
    from monai.bundle import ConfigParser, ConfigWorkflow

    monkeypatch.chdir(ROOT)
    given = [f"bundles/brats_fpa/configs/{f}" for f in files]
    argv = [monai.bundle.__main__.__file__, "run", "evaluating", "--config_file", repr(given)]
    monkeypatch.setattr("sys.argv", argv)
    workflow = ConfigWorkflow(
        config_file=given, logging_file=False, workflow_type="eval", run_id="evaluating"
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as err:
        workflow.run()
    cause = str(err.value.__cause__)
    suggested = re.search(r'--config_file "(\[.*?\])"', cause).group(1)
    layered = ["bundles/brats_fpa/configs/train.json", "bundles/brats_fpa/configs/evaluate.json"]
    assert ast.literal_eval(suggested) == layered, cause
    parser = ConfigParser()  # the suggestion runs as typed, from where the command ran
    parser.read_config(layered)
    assert parser.get_parsed_content("evaluating#0") is None


def test_evaluate_json_after_train_json_passes_its_first_step():
    """The documented order passes evaluate.json's check (its ``+validate`` keys leave train.json's
    validation as it was) and the evaluation keeps its edits of it."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / "brats_fpa" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    assert parser.get_parsed_content("evaluating#0") is None
    assert parser["configs_read"] == ["train.json", "evaluate.json"]
    assert parser["validate#metrics#prefix"] == "test_" and "evaluator" in parser["validate"]


def test_readme_says_the_bundles_train_2d_networks_and_3d_ones_are_for_own_loops():
    """The README said every block takes ``spatial_dims`` 2 or 3 and that own data may be 3-D, but
    not that the bundles and commands only build 2-D networks (slice-wise): a user with volumes
    could not tell how to train a 3-D network. Its "3-D networks" section says so, and the bundle
    templates must still build 2-D networks for that to hold (its example runs in
    test_doc_examples_run)."""
    import json

    text = (ROOT / "README.md").read_text()
    said = " ".join(sentences(text, "own training loop"))
    assert "train and segment 2-D networks on slices" in said and "`spatial_dims` is 2" in said, said
    assert "### 3-D networks" in text
    for config in ("train.json", "inference.json"):
        template = json.loads((ROOT / "pam_monai" / "bundle_templates" / config).read_text())
        assert template["network_def"]["spatial_dims"] == 2, config


def test_readme_says_inference_pads_a_small_volume_and_refuses_it_nowhere():
    """Inference once refused a BraTS or ISLES volume smaller than the crop (and advised padding it
    by hand, whose mask is on the padded grid) while training and evaluation padded it; it pads it
    now (tests/test_reliability.py), and README's "Validate before work" says so, not a refusal."""
    from pam_monai.data import DATASETS

    text = " ".join((ROOT / "README.md").read_text().split())
    refused = " ".join(sentences(text, "inference refuses a missing modality"))
    assert "smaller than the crop" not in refused, refused
    cropped = {name for name, spec in DATASETS.items() if spec.volumetric and spec.inference_fit == "crop"}
    assert cropped == {"brats", "isles"}
    assert "A BraTS or ISLES volume smaller in-plane than the crop is zero-padded to it" in text
    assert "its mask is cut back to the input's grid" in text


def test_benchmarks_readme_states_the_fast_mode_as_it_is():
    """benchmarks/README.md's H100 section said the bundles' and the benchmark's ``fast`` leave
    channels-last off; since the up-sampling runs as GEMMs CUDA's ``fast`` includes it. Every
    ``fast` = ...`` statement there must list the flags :func:`parse_mode` gives on CUDA."""
    from pam_monai.bench.modes import FLAGS, parse_mode

    text = " ".join((ROOT / "benchmarks" / "README.md").read_text().split())

    def flags(device: str) -> set[str]:
        return {f for f in FLAGS if getattr(parse_mode("fast", device), f)}

    stated = re.findall(r"(.{20})`fast` = ((?:\w+\+)+\w+)", text)
    assert len(stated) >= 3, stated  # the modes paragraph (CUDA, CPU) and the H100 section
    for before, listed in stated:
        assert set(listed.split("+")) == flags("cpu" if "CPU" in before else "cuda"), (before, listed)
    assert "therefore leave it off" not in text


def _found_by_inference(tmp_path, task: str) -> set[str]:
    """The folders whose cases inference takes from a small synthetic set: BraTS with an LGG case,
    CityScapes with a second 'val' city moved to 'test', ISLES' TRAINING renamed TESTING."""
    from pam_monai.data import synth
    from pam_monai.engines import find_inference_cases

    root = tmp_path / task
    if task == "brats":
        synth("brats", root, cases=1, slices=2, lgg_cases=1)
    elif task == "cityscapes":
        synth("cityscapes", root, cases=1, size=(32, 16), train_cities=2, val_cities=2)
        for top in ("leftImg8bit", "gtFine"):
            city = sorted((root / top / "val").iterdir())[-1]
            (root / top / "test").mkdir()
            city.rename(root / top / "test" / city.name)
    else:
        synth("isles", root, cases=1, max_slices=2)
        (root / "TRAINING").rename(root / "TESTING")
    items = find_inference_cases(task, root)
    images = [item["image"] if isinstance(item["image"], str) else item["image"][0] for item in items]
    return {Path(image).relative_to(root).parts[0 if task != "cityscapes" else 1] for image in images}


@pytest.mark.parametrize("task", ["brats", "cityscapes", "isles"])
def test_bundle_readme_says_which_cases_inference_segments(task, tmp_path):
    """The bundles' README said only that ``--input_dir`` holds cases in the published layout;
    inference segments every BraTS grade, every CityScapes split and ISLES' TESTING/ alone, not
    training's selection (HGG, train/val). The README names each folder inference takes."""
    found = _found_by_inference(tmp_path, task)
    assert (
        found == {"brats": {"HGG", "LGG"}, "cityscapes": {"train", "val", "test"}, "isles": {"TESTING"}}[task]
    )
    text = " ".join((ROOT / "bundles" / f"{task}_fpa" / "docs" / "README.md").read_text().split())
    said = text[text.index("`--input_dir` holds cases") : text.index("`--save_probabilities true` also")]
    assert all(f"`{folder}" in said for folder in found), (found, said)
    assert "that it did not write" in text


def test_data_readme_says_inference_takes_every_grade_and_split(tmp_path):
    """pam_monai/data/README.md's layouts say "HGG only unless grades=..." (the readers' and
    training's default) without a word that inference takes every BraTS grade, every CityScapes
    split and ISLES' TESTING/; it now says so, as find_inference_cases does."""
    text = " ".join((ROOT / "pam_monai" / "data" / "README.md").read_text().split())
    said = " ".join(sentences(text, "find_inference_cases"))
    assert _found_by_inference(tmp_path, "brats") == {"HGG", "LGG"}
    assert "every BraTS grade" in said and "every CityScapes split" in said and "`TESTING/`" in said, said


DOCS = (
    "README.md",
    "pam_monai/bundle_templates/README.md.in",
    "benchmarks/README.md",
    "data_lists/README.md",
    "pam_monai/data/README.md",
    "pam_monai/metrics/README.md",
    "examples/README.md",
)
# flags of other tools the docs show: torchrun, monai.bundle's own, pip
OTHER_TOOLS = {
    "config_file",
    "meta_file",
    "tracking",
    "filepath",
    "ckpt_file",
    "hash_val",
    "nproc_per_node",
    "standalone",
}


def _known_flags() -> dict[str, set[str]]:
    """Each ``python -m pam_monai`` command's flags, and (key ``monai.bundle``) the bundle configs' ids."""
    import importlib
    import inspect
    import json

    from pam_monai.cli import COMMANDS
    from pam_monai.data import synthetic

    known = {}
    for command, target in COMMANDS.items():
        module, name = target.split(":")
        known[command] = set(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    for generator in (
        synthetic.synth_brats,
        synthetic.synth_isles,
        synthetic.synth_cityscapes,
        synthetic.synth_nnunet,
    ):
        known["synth"] |= set(inspect.signature(generator).parameters)  # synth's **options
    ids = set()
    for config in (ROOT / "pam_monai" / "bundle_templates").glob("*.json"):
        ids |= {key.lstrip("+").split("#")[0] for key in json.loads(config.read_text())}
    from pam_monai.experiments.runner import RESERVED

    known["experiment"] |= ids - set(RESERVED)  # its **overrides go to every bundle run; these it sets itself
    known["monai.bundle"] = ids | OTHER_TOOLS
    return known


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_use_flags_that_exist(doc):
    """Every ``--flag`` of a ``python -m pam_monai <command>`` or ``python -m monai.bundle ...`` line
    in the docs is a parameter of that command or an id of the bundle configs: a renamed flag
    (or config id) left in a documented command fails there, not in a user's shell."""
    known = _known_flags()
    text = (ROOT / doc).read_text().replace("\\\n", " ")
    bad = []
    for m in re.finditer(r"python -m (pam_monai (\w+)|monai\.bundle \w+)([^\n`]*)", text):
        command = m[2] or "monai.bundle"
        assert command in known, f"{doc}: unknown command {m[0]!r}"
        flags = re.findall(r"(?<![\w/-])--(\w+)", m[3].split(" #")[0])
        bad += [f"--{flag} in {m[0].strip()!r}" for flag in flags if flag not in known[command] | {"help"}]
    assert not bad, f"{doc}: " + "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS)
def test_doc_names_in_the_package_exist(doc):
    """Every ``pam_monai.x.y`` the docs name (a class to put in a config, a function to call) exists."""
    missing = []
    for name in sorted(set(re.findall(r"pam_monai(?:\.\w+)+", (ROOT / doc).read_text()))):
        try:
            resolve_dotted(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name}: {e}")
    assert not missing, f"{doc}: " + "\n".join(missing)


def test_data_readme_lists_the_checkers_label_map_problem(tmp_path):
    """pam_monai/data/README.md's checker problems ended at "a non-RGB CityScapes image", but a BraTS
    modality holding a label map (the seg given for the T1) is a problem too: the list names it."""
    import shutil

    from pam_monai.data import check_dataset, synth

    root = tmp_path / "brats"
    synth("brats", root, cases=1, slices=4)
    case = next((root / "HGG").iterdir())
    shutil.copy(case / f"{case.name}_seg.nii.gz", case / f"{case.name}_t1.nii.gz")
    report = check_dataset("brats", root)
    assert [p for p in report.problems if "label map" in p.message], report.format()
    text = " ".join((ROOT / "pam_monai" / "data" / "README.md").read_text().split())
    said = text[text.index("Problems: missing or empty data folder") : text.index("Warnings (exit 0)")]
    assert (
        "a BraTS modality holding a label map" in said and "for ISLES" in said and "`gtFine_color`" in said
    ), said


def test_experiment_help_names_every_data_set_with_folds():
    """``experiment --help`` said "folds: BRATS folds", though own data (nnunet) is cross-validated
    in 5 folds too (``FOLDED``) and --folds all runs them."""
    from pam_monai.data.datalist import FOLDED
    from pam_monai.experiments.runner import _folds, experiment

    doc = " ".join(experiment.__doc__.split())
    said = doc[doc.index("folds: ") : doc.index("output: ")]
    for dataset in FOLDED:
        assert _folds("all", dataset) == [0, 1, 2, 3, 4]
        assert dataset in said.lower(), said


def test_readme_says_which_defects_of_the_authors_code_are_not_copied():
    """REFERENCE.md section 7 lists the authors' code's defects; README says each is deliberately
    not reproduced (the tests that hold them: test_reference_tables.py, test_metrics.py,
    test_bundles.py::test_training_and_validation_avoid_the_authors_code_s_defects)."""
    text = " ".join((ROOT / "README.md").read_text().split())
    said = text.split("### Not copied from the authors' code", 1)[1].split("## Data", 1)[0]
    for defect in (
        "centre-crops",
        "background and foreground Dice",
        "physical units",
        "FGSM",
        "with replacement",
    ):
        assert defect in said, defect


# --- every usage example of the docs runs --------------------------------------------------------
# Docstring ``>>>`` examples of pam_monai.networks and pam_monai.metrics run in test_networks.py and
# test_metrics.py (which require every module there to have some); the rest of the package's, and
# the docs' fenced ``python`` blocks, run here. The names a block leaves to its user (a data root,
# a device, a case) and its ``name = ...  # what it is`` placeholders get values from EXAMPLE_SETUP,
# keyed by the doc and the block's first line; a block needing one without an entry fails there.
DOC_EXAMPLES_ELSEWHERE = ("pam_monai.networks", "pam_monai.metrics")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PLACEHOLDER = re.compile(r"^(\w+) = \.\.\.(?:\s+#.*)?$", re.M)


def _brats_training_root(tmp_path: Path) -> Path:
    """``data_lists/`` and a data root holding every case of the shipped BraTS datalist, each case's
    files linked to one small synthetic case's (a training epoch of the real list in seconds)."""
    import shutil

    from pam_monai.data import load_datalist, synth

    shutil.copytree(ROOT / "data_lists", tmp_path / "data_lists")
    source = next((synth("brats", tmp_path / "synthetic", cases=1, slices=4) / "HGG").iterdir())
    root = tmp_path / "brats"
    for entry in load_datalist(tmp_path / "data_lists" / "brats2018_hgg_5fold.json", root)["training"]:
        for path in map(Path, [*entry["image"], entry["label"]]):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(source / f"{source.name}_{path.name.rsplit('_', 1)[1]}")
    return root


def _first_case(tmp_path: Path, dataset: str, **options) -> dict:
    """The inference item of a one-case synthetic ``dataset``."""
    from pam_monai.data import synth
    from pam_monai.engines import find_inference_cases

    return find_inference_cases(dataset, synth(dataset, tmp_path / dataset, cases=1, **options))[0]


def _slice_dataset(tmp_path):
    return {"data_root": _brats_training_root(tmp_path), "device": "cpu"}, {}


def _inference(tmp_path):
    item = _first_case(tmp_path, "brats", slices=4)
    return {"item": item}, {"pred": lambda ns: (ns["pre"]["image"][0] > 0).astype("uint8")}


def _inference_2d(tmp_path):
    import numpy as np

    return {"item": _first_case(tmp_path, "cityscapes", size=(64, 32))}, {
        "prob": lambda ns: np.full((128, 256), 0.7)
    }


def _metric_batch(tmp_path):
    import torch

    return {"y_pred": torch.ones(2, 1, 4, 4, 4), "y": torch.ones(2, 1, 4, 4, 4)}, {}


def _half_the_brats_list(tmp_path):
    """Half the cases of the shipped BraTS list on disk (the label is the file the block checks)."""
    root = _brats_training_root(tmp_path)
    for case in sorted((root / "HGG").iterdir())[::2]:
        next(case.glob("*_seg.nii.gz")).unlink()
    return {"root": str(root)}, {}


def _kept_the_list_s_folds(tmp_path, ns) -> bool:
    """The subset holds the datalist's entries of the cases on disk, folds unchanged, and loads."""
    from pam_monai.data import get_split, load_datalist

    kept = load_datalist(tmp_path / "brats_subset.json")["training"]
    full = load_datalist(tmp_path / "data_lists" / "brats2018_hgg_5fold.json")["training"]
    on_disk = [e for e in full if (Path(ns["root"]) / e["label"]).is_file()]
    return (
        kept == on_disk and 0 < len(kept) < len(full) and get_split("brats", "brats_subset.json", "test", 0)
    )


# (doc, a python block's first line) -> (setup(tmp_path) -> (names given, placeholders' makers),
# what the text says the block does: check(tmp_path, the block's namespace) -> bool)
EXAMPLE_SETUP = {
    ("pam_monai/data/README.md", "import torch"): (
        _slice_dataset,
        lambda tmp, ns: ns["batch"]["image"].shape[1:] == (4, 160, 160) and len(ns["ds"]) > 0,
    ),
    ("pam_monai/data/README.md", "import nibabel as nib"): (
        _inference,
        lambda tmp, ns: (
            ns["pre"]["image"].shape[:3] == (4, 160, 160)
            and ns["full"].shape == ns["case"]["original_shape"]
            and (tmp / "pred.nii.gz").is_file()
        ),
    ),
    ("pam_monai/data/README.md", "from pam_monai.data import load_case, restore_mask"): (
        _inference_2d,
        lambda tmp, ns: ns["mask"].shape == ns["frame"]["original_shape"] and ns["mask"].all(),
    ),
    ("pam_monai/metrics/README.md", "from monai.handlers import from_engine"): (
        _metric_batch,
        lambda tmp, ns: ns["metric"].aggregate().item() == 0.0,
    ),
    ("data_lists/README.md", "import json, os"): (_half_the_brats_list, _kept_the_list_s_folds),
    ("README.md", "import torch"): (
        lambda tmp: ({}, {}),
        lambda tmp, ns: ns["mask"].shape == (1, 1, 70, 50, 12) and ns["net"].spatial_dims == 3,
    ),
}


def _doc_examples() -> list:
    """``(module, None)`` for each package module with ``>>>`` examples not run elsewhere, and
    ``(doc, block)`` for each fenced ``python`` block of DOCS."""
    found = []
    for path in sorted((ROOT / "pam_monai").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if ">>> " in path.read_text() and not module.startswith(DOC_EXAMPLES_ELSEWHERE):
            found.append(pytest.param(module, None, id=module))
    for doc in DOCS:
        for block in PYTHON_BLOCK.findall((ROOT / doc).read_text()):
            found.append(pytest.param(doc, block, id=f"{doc}:{block.splitlines()[0][:50]}"))
    return found


def _run_block(doc: str, block: str, tmp_path: Path) -> None:
    """Run a fenced block with EXAMPLE_SETUP's names (a name it assigns a value to itself, such as a
    data root, takes the setup's) and check what its text says it does."""
    setup, check = EXAMPLE_SETUP.get((doc, block.splitlines()[0]), (lambda tmp: ({}, {}), None))
    given, makers = setup(tmp_path)
    missing = set(PLACEHOLDER.findall(block)) - set(makers)
    assert not missing, f"{doc}: no value for the placeholder(s) {sorted(missing)}: add them to EXAMPLE_SETUP"
    code = PLACEHOLDER.sub(lambda m: f"{m[1]} = __makers__[{m[1]!r}](globals())", block)
    for name in given:  # `root = "/data/..."`: the user's own value, here the setup's
        code = re.sub(rf"^{name} = .*$", f"{name} = __given__[{name!r}]", code, flags=re.M)
    namespace = {**given, "__given__": given, "__makers__": makers}
    exec(compile(code, f"{doc} (python block)", "exec"), namespace)
    if check is not None:
        assert check(tmp_path, namespace), f"{doc}: the block ran but does not do what its text says"


@pytest.mark.parametrize(("where", "block"), _doc_examples())
def test_doc_examples_run(where, block, tmp_path, monkeypatch):
    """Every usage example runs as written: the ``>>>`` examples of each package module not run in
    test_networks.py / test_metrics.py, and each fenced ``python`` block of the docs (in a temporary
    folder, with the names left to the user set by EXAMPLE_SETUP). The data README's inference
    blocks called functions they never imported."""
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    if block is None:
        result = doctest.testmod(importlib.import_module(where))
        assert result.attempted > 0 and result.failed == 0, (
            f"{where}: {result.failed} docstring example(s) fail"
        )
    else:
        _run_block(where, block, tmp_path)


@pytest.mark.parametrize(
    ("doc", "start", "end"),
    [
        ("README.md", "Overridable ids in every bundle:", "Validation runs each epoch"),
        ("bundles/brats_fpa/docs/README.md", "Overridable ids:", "On the command line"),
    ],
)
def test_docs_overridable_ids_exist_with_the_stated_defaults(doc, start, end):
    """The docs' lists of a bundle's overridable ids name ids of every bundle's configs (a renamed id
    left in the list would be refused on the command line as unknown), and a default stated beside
    an id (``weight_decay`` (1e-5), ``log_every`` ... default 10) is train.json's value."""
    import json

    text = " ".join((ROOT / doc).read_text().split())
    said = text[text.index(start) : text.index(end)]
    listed = set(re.findall(r"`(\w+)`", said)) - {"nnunet"}  # a value of `task`, not an id
    assert len(listed) > 20, said
    for name in bundle_names():
        ids = set()
        for config in (ROOT / "bundles" / name / "configs").glob("*.json"):
            ids |= {key.lstrip("+").split("#")[0] for key in json.loads(config.read_text())}
        assert listed <= ids, f"{doc} lists ids {sorted(listed - ids)} that {name}'s configs lack"
    train = json.loads((ROOT / "bundles" / "brats_fpa" / "configs" / "train.json").read_text())
    stated = re.findall(r"`(\w+)` \((?:[^()]*?default )?([0-9][0-9.e-]*)[:,;)]", said)
    assert len(stated) >= 3, said
    for key, value in stated:
        assert float(train[key]) == float(value), (
            f"{doc}: `{key}` default {value}, train.json has {train[key]}"
        )


@pytest.mark.parametrize("name", [n for n in bundle_names() if not n.startswith("brats_")])
def test_non_brats_bundle_readmes_quote_no_brats_settings(name):
    """ISLES and CityScapes bundles once gave the validation memory of a BraTS case and BraTS 2021's
    foreground_label: a reader sizes the run by their own data set's slices instead."""
    text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
    assert "per full-size BraTS case" not in text and "BraTS 2021+" not in text  # memory, check time
    assert "for the whole run: float32 " in text and ("per slice" in text or "per image" in text)


def test_own_data_bundle_readme_gives_its_own_validation_memory(tmp_path):
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.data import synth

    own = synth("nnunet", tmp_path / "Dataset900", cases=2)
    readme = own_data_bundle(own, "fpa", tmp_path / "own_fpa", crop_size=[96, 80], check=False)
    text = " ".join((readme / "docs" / "README.md").read_text().split())
    assert "BraTS case" not in text
    assert "float32 2 x 96 x 80 image and label per slice, 0.09 MB" in text


CITYSCAPES_TRAIN_CITIES = (  # the 18 cities of the published 'train' split
    "aachen bochum bremen cologne darmstadt dusseldorf erfurt hamburg hanover jena krefeld "
    "monchengladbach strasbourg stuttgart tubingen ulm weimar zurich"
).split()


def test_docs_name_the_cityscapes_city_held_out_for_validation():
    """Which 'train' city validates (and so picks the kept checkpoint) by default: the data README
    and data_lists/README.md name it, and it is the one the split draws at seed 0."""
    from pam_monai.data.datalist import rank_cases

    city = rank_cases(CITYSCAPES_TRAIN_CITIES, 0)[0]
    for doc in ("pam_monai/data/README.md", "data_lists/README.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert f"`{city}` at seed 0" in text, doc


def test_readme_lists_every_overridable_id_the_bundle_readme_lists():
    """README.md's list of overridable ids left out ``check_data``, which every bundle's README
    lists: a reader of the top-level README did not learn that the up-front data check can be
    skipped. README's list holds at least every id of the bundles' lists."""

    def listed(doc: str, start: str, end: str) -> set[str]:
        text = " ".join((ROOT / doc).read_text().split())
        return set(re.findall(r"`(\w+)`", text[text.index(start) : text.index(end)]))

    readme = listed("README.md", "Overridable ids in every bundle:", "Validation runs each epoch")
    for name in bundle_names():
        bundle = listed(f"bundles/{name}/docs/README.md", "Overridable ids:", "On the command line")
        assert bundle <= readme, f"README.md's overridable ids lack {sorted(bundle - readme)} ({name})"


def test_data_readme_names_every_format_convert_folders_takes():
    """The data README's row for folders.py said "3-D, 4-D NIfTI, 2-D PNG" after convert_folders
    began to copy MetaImage and NRRD volumes: the row names each ending the converter reads."""
    from pam_monai.data import folders

    text = (ROOT / "pam_monai" / "data" / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `folders.py` |"))
    missing = [e for e in folders.SITK_ENDINGS if e not in row]  # NIfTI's endings: said as "NIfTI"
    assert "NIfTI" in row and not missing, row


HISTORY = re.compile(r"(?:^|[.;:(]\s+)(?:[Bb]efore, |[^.]*, which was the last line before)")


@pytest.mark.parametrize("doc", DOCS)
def test_docs_say_what_the_code_does_not_what_it_did(doc):
    """README.md told users "Before, SIGTERM ended the process at once" and "before, both wrote the
    same model.pt": what a change fixed belongs in its commit message; a user reads what the code
    does now (a note stays only where an upgrading user must act)."""
    text = " ".join((ROOT / doc).read_text().split())
    found = [m.group(0) for m in HISTORY.finditer(text)]
    assert not found, f"{doc}: history sentences {found}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    """The anchors of ``doc``'s headings."""
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_doc_links_reach_their_file_and_heading(doc):
    """The README sends readers to the section that holds a fact rather than repeating it
    (``[Speed](#speed)``, the data README's cache-cost table): each relative link's file exists and
    its ``#anchor`` is a heading there, so a renamed heading fails here, not in a reader's browser."""
    path = ROOT / doc
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists() or (anchor and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{doc}: links to nothing: {broken}"


def test_readme_contents_line_links_every_section_in_order():
    """README.md (about 700 lines) had no table of contents: a reader looking for own data or the
    metrics scrolled. Its ``**Contents:**`` line links each ``##`` section, in the README's order."""
    text = (ROOT / "README.md").read_text()
    contents = text[text.index("**Contents:**") : text.index("\n\n", text.index("**Contents:**"))]
    linked = re.findall(r"\]\(#([^)]+)\)", contents)
    sections = [_slug(h) for h in re.findall(r"^## (.+)$", text, re.M)]
    assert linked == sections, (linked, sections)


@pytest.mark.parametrize("name", bundle_names())
def test_bundle_readme_installs_pytorch_s_cpu_build_first_as_the_readme_does(name):
    """The bundles' Requirements said only "add -c .ci/constraints.txt on a CPU-only machine", but
    outside the project's machines PyPI's Linux torch is the CUDA build (several GB): README.md says
    to install PyTorch's CPU build first, and so do the bundles."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "on a CPU-only machine install the CPU build first" in readme
    text = " ".join((ROOT / "bundles" / name / "docs" / "README.md").read_text().split())
    said = text[text.index("## Requirements") : text.index("## Data")]
    assert "install PyTorch's CPU build first" in said, said


def test_readme_layout_names_files_that_exist_and_every_network_and_metric_module():
    """README's Layout left out networks/losses.py (BatchDiceLoss), blocks/resize.py and
    metrics/masks.py, and data/isles22.py. Each file it names exists in its folder, and the network
    and metric folders, whose modules a reader looks up there, are listed whole."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout") :].split("```")[1]
    rows = [line.split(None, 1) for line in layout.strip().splitlines()]
    named = {
        folder: set(re.findall(r"\b(\w+\.py)\b", rest))
        for folder, rest in rows
        if folder.startswith("pam_monai/")
    }
    missing = [
        f"{folder}{name}"
        for folder, names in named.items()
        for name in names
        if not (ROOT / folder / name).is_file()
    ]
    assert not missing, missing
    for folder in (
        "pam_monai/networks/blocks/",
        "pam_monai/networks/nets/",
        "pam_monai/networks/",
        "pam_monai/metrics/",
    ):
        modules = {p.name for p in (ROOT / folder).glob("*.py")} - {"__init__.py"}
        assert modules <= named[folder], f"Layout's {folder} lacks {sorted(modules - named[folder])}"
