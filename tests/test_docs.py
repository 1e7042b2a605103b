"""The documentation's checkable claims against the code: statements that went stale once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pam_monai.bundle_templates.build import bundle_names

ROOT = Path(__file__).resolve().parents[1]


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


def test_readme_refuses_a_small_volume_only_where_inference_does():
    """README's "Validate before work" said inference refuses "a volume smaller than the crop"; it
    does so only for the data sets whose ``inference_fit`` is ``"crop"`` (BraTS, ISLES): own
    volumes are zero-padded (``"pad"``), as the README's "Your own data" says."""
    from pam_monai.data import DATASETS

    text = (ROOT / "README.md").read_text()
    said = " ".join(sentences(text, "inference refuses a missing modality"))
    assert "smaller than the crop" in said
    refused = {name for name, spec in DATASETS.items() if spec.volumetric and spec.inference_fit == "crop"}
    assert refused == {"brats", "isles"}
    assert "a BraTS or ISLES volume smaller than the crop" in said and "own volumes are padded" in said, said


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
