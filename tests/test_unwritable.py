"""Full disks and read-only folders: the earlier complete file survives, nothing half-written is
left, and the error names the file or folder (and the flag that sends the output elsewhere)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import error_chain

from pam_monai.atomic import atomic_path, atomic_write_text, sibling_temp_dir
from pam_monai.engines import atomic_save, load_checkpoint
from pam_monai.engines.case_metrics import write_case_metrics
from pam_monai.engines.infer import save_prediction

NO_SPACE = os.strerror(errno.ENOSPC)


def _fill_then_fail(path) -> None:
    """What a write on a full disk does: part of the file, then ENOSPC."""
    with open(path, "wb") as f:
        f.write(b"half")
    raise OSError(errno.ENOSPC, NO_SPACE)


def _torch_save_on_a_full_disk(obj, f, *args, **kwargs) -> None:
    # torch.save's zip writer turns the OSError into a RuntimeError of its own, and closing the
    # file raises ENOSPC again (seen on a 6 MB tmpfs)
    f.write(b"half")
    try:
        raise OSError(errno.ENOSPC, NO_SPACE)
    except OSError:  # as torch does: the OSError only as the implicit context
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1705920")  # noqa: B904


def _assert_disk_full(error: pytest.ExceptionInfo, target: Path) -> None:
    assert error.value.errno == errno.ENOSPC
    message = str(error.value)
    assert str(target) in message and "disk is full" in message, message


def test_a_full_disk_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    """ENOSPC during a checkpoint, a metrics table or a mask: the earlier complete file is kept,
    no temporary file is left, and the error names the file (it was a bare '[Errno 28] No space
    left on device' that named none; a checkpoint's was torch's RuntimeError about a zip position)."""
    models = tmp_path / "models"
    ckpt = atomic_save({"epoch": 1}, models / "checkpoint_last.pt")
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk)
    with pytest.raises(OSError) as error:
        atomic_save({"epoch": 2}, ckpt)
    _assert_disk_full(error, ckpt)
    monkeypatch.undo()
    assert load_checkpoint(ckpt) == {"epoch": 1}
    assert os.listdir(models) == ["checkpoint_last.pt"]

    rows = [{"case": "a", "iou": 1, "dice": 1, "hd95": 0, "fp_rate": 0, "fn_rate": 0, "target_empty": 0}]
    rows[0]["pred_empty"] = 0
    eval_dir = tmp_path / "eval"
    write_case_metrics(rows, eval_dir)
    before = (eval_dir / "metrics.csv").read_text()
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: _fill_then_fail(self))
    with pytest.raises(OSError) as error:
        write_case_metrics([{**rows[0], "case": "b"}], eval_dir)
    _assert_disk_full(error, eval_dir / "metrics.csv")
    monkeypatch.undo()
    assert (eval_dir / "metrics.csv").read_text() == before
    assert sorted(os.listdir(eval_dir)) == [".metrics.lock", "metrics.csv", "summary.json"]  # no temp file

    image = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), image)
    out = tmp_path / "predictions"
    mask = save_prediction(np.ones((4, 4, 2), np.uint8), out / "a_seg.nii.gz", image, np.eye(4))
    monkeypatch.setattr(nib, "save", lambda img, name: _fill_then_fail(name))
    with pytest.raises(OSError) as error:
        save_prediction(np.zeros((4, 4, 2), np.uint8), mask, image, np.eye(4))
    _assert_disk_full(error, mask)
    monkeypatch.undo()
    assert nib.load(mask).get_fdata().sum() == 32 and os.listdir(out) == ["a_seg.nii.gz"]


def test_a_full_disk_in_a_nested_write_names_the_inner_file(tmp_path, monkeypatch):
    """model.json.pending is written inside model.pt's atomic write: its failure names it, not
    model.pt (the outer write does not reword what the inner one has said)."""
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: _fill_then_fail(self))
    with pytest.raises(OSError) as error, atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"weights")
        atomic_write_text(tmp_path / "model.json.pending", "{}")
    _assert_disk_full(error, tmp_path / "model.json.pending")
    assert os.listdir(tmp_path) == []


def _read_only(monkeypatch, folder: Path) -> None:
    """Make creating files and folders in ``folder`` fail as on a read-only mount (chmod does not
    stop root)."""

    def refuse(name: str):
        def call(*args, **kwargs):
            where = Path(kwargs["dir"])  # the project always passes dir=
            if where == folder or folder in where.parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(where / ".x.pid1@h.abcdefgh.tmp"))
            return original[name](*args, **kwargs)

        return call

    def mkdir(self, *args, **kwargs):
        if folder in self.parents and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return original["mkdir"](self, *args, **kwargs)

    original = {"mkstemp": tempfile.mkstemp, "mkdtemp": tempfile.mkdtemp, "mkdir": Path.mkdir}
    monkeypatch.setattr(tempfile, "mkstemp", refuse("mkstemp"))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse("mkdtemp"))
    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_a_read_only_folder_is_named_not_a_temporary_file(tmp_path, monkeypatch):
    """An atomic write into a read-only folder said "Read-only file system:
    '.../.metrics.csv.pid4242@host-ns1.kb0clt9m.tmp'", a name the user never chose."""
    folder = tmp_path / "bundle" / "eval"
    folder.mkdir(parents=True)
    _read_only(monkeypatch, folder)
    with pytest.raises(OSError) as error:
        atomic_write_text(folder / "metrics.csv", "x")
    message = str(error.value)
    assert error.value.errno == errno.EROFS
    assert str(folder / "metrics.csv") in message and f"{folder} is not writable" in message, message
    assert ".tmp" not in message
    with pytest.raises(OSError, match=f"{folder / 'converted'}: cannot write it: {folder} is not writable"):
        sibling_temp_dir(folder / "converted")
    # a folder to create in the read-only one is named as such, not as an existing unwritable one
    with pytest.raises(
        OSError, match=f"{folder / 'new' / 'x.json'}: cannot write it: {folder / 'new'} could not be created"
    ):
        atomic_write_text(folder / "new" / "x.json", "{}")


# ---------------------------------------------------------------- refused before any work

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "brats_fpa" / "configs"


def _run_bundle(monkeypatch, guard: str, workflow: str, files: list[str], **overrides) -> str:
    """Run a bundle workflow whose first piece of work, ``pam_monai.engines.<guard>``, fails;
    return the messages of the error that stopped it."""
    from monai.bundle import run

    import pam_monai.engines

    def work(*args, **kwargs):
        raise AssertionError(f"{guard}: the work began")

    monkeypatch.setattr(pam_monai.engines, guard, work)
    with pytest.raises(Exception) as error:
        run(workflow, config_file=[str(CONFIGS / f) for f in files], logging_file=False, **overrides)
    return "\n".join(error_chain(error.value))


def test_a_read_only_bundle_is_refused_before_any_work_and_its_outputs_can_go_elsewhere(
    tmp_path, monkeypatch
):
    """A trained bundle in a shared, read-only folder: evaluation ran to its end and then failed on
    eval/metrics.csv (inference on its first mask, a resumed training after a whole epoch on
    models/), naming a temporary file. Now each refuses at the start, naming the folder and the
    override that sends the output elsewhere, and runs from the bundle with that override."""
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    _read_only(monkeypatch, bundle)
    elsewhere = {"output_dir": str(tmp_path / "out")}
    evaluation = ("evaluating", ["train.json", "evaluate.json"])

    said = _run_bundle(monkeypatch, "prepare_data", *evaluation, bundle_root=str(bundle))
    assert f"{bundle / 'eval'}: not writable (its parent {bundle})" in said, said
    assert "pass --output_dir DIR" in said and "the work began" not in said, said
    said = _run_bundle(monkeypatch, "prepare_data", *evaluation, bundle_root=str(bundle), **elsewhere)
    assert "prepare_data: the work began" in said, said  # models/ is only read

    said = _run_bundle(monkeypatch, "check_run", "inferring", ["inference.json"], bundle_root=str(bundle))
    assert f"{bundle / 'predictions'}: not writable" in said and "pass --output_dir DIR" in said, said
    said = _run_bundle(
        monkeypatch,
        "check_run",
        "inferring",
        ["inference.json"],
        bundle_root=str(bundle),
        **elsewhere,
    )
    assert "check_run: the work began" in said, said

    # training (or --resume true) with its checkpoints in the read-only folder
    models = str(bundle / "models")
    said = _run_bundle(
        monkeypatch, "prepare_data", "training", ["train.json"], bundle_root=str(tmp_path), ckpt_dir=models
    )
    assert (
        f"{models}: not writable: " in said
        and "pass --ckpt_dir DIR (to resume, copy this folder's checkpoints there first)" in said
    ), said
    assert "the work began" not in said


def test_a_read_only_cache_serves_what_it_holds_and_names_the_flag_for_the_rest(tmp_path, monkeypatch):
    from pam_monai.data import SliceDataset, discover_cases, synth

    cases = discover_cases("brats", synth("brats", tmp_path / "raw", cases=2, slices=4))
    cache = tmp_path / "cache"
    SliceDataset(cases[:1], "brats", cache_dir=cache, progress=False)
    _read_only(monkeypatch, cache)
    SliceDataset(cases[:1], "brats", cache_dir=cache, progress=False)  # all cached: nothing to write
    with pytest.raises(OSError) as error:
        SliceDataset(cases, "brats", cache_dir=cache, progress=False)
    message = str(error.value)
    assert f"{cache / 'brats'} is not writable" in message and "pass --cache_dir DIR" in message, message


def test_commands_refuse_an_output_folder_they_cannot_write_before_any_work(tmp_path, monkeypatch):
    """score wrote metrics.csv only after scoring every mask, ensemble after averaging its first
    case, and experiment got as far as its lock file before a read-only --output failed."""
    import pam_monai.engines.ensemble as ensemble_module
    import pam_monai.engines.score as score_module
    import pam_monai.experiments.runner as runner

    def work(*args, **kwargs):
        raise AssertionError("the work began")

    read_only = tmp_path / "shared"
    read_only.mkdir()
    _read_only(monkeypatch, read_only)
    preds = tmp_path / "preds"
    for fold in ("fold0", "fold1"):
        (preds / fold).mkdir(parents=True)
        np.save(preds / fold / "a_prob.npy", np.full((4, 4), 0.75, np.float32))

    monkeypatch.setattr(score_module, "score_predictions", work)
    with pytest.raises(OSError, match=f"{read_only / 'metrics'}: not writable .*pass --output DIR"):
        score_module.score(str(preds / "fold0"), "brats", str(tmp_path), output=str(read_only / "metrics"))

    monkeypatch.setattr(ensemble_module, "_read", work)
    with pytest.raises(OSError, match=f"{read_only / 'ens'}: not writable .*pass --output DIR"):
        ensemble_module.ensemble(f"{preds / 'fold0'},{preds / 'fold1'}", str(read_only / "ens"))

    monkeypatch.setattr(runner, "_run_grid", work)
    with pytest.raises(OSError, match=f"{read_only}: not writable: .*pass --output DIR"):
        runner.experiment(dataset="brats", networks="unet", output=str(read_only))


def test_every_workflow_checks_its_output_folders_first():
    """multi_gpu_train.json replaces train.json's initialize: it must keep the check."""
    from monai.bundle import ConfigParser

    for files in (["train.json"], ["train.json", "multi_gpu_train.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        # a step "@checks" runs that id's list (train.json's checks, shared with multi_gpu_train.json)
        steps = [
            x for step in parser["initialize"] for x in (parser[step[1:]] if step.startswith("@") else [step])
        ]
        assert "$pam_monai.engines.check_outputs(@output_dirs)" in steps, files
