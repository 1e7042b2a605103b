"""The command line's own documentation: what ``python -m pam_monai <command> --help`` shows."""

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from fire import docstrings

import pam_monai
from pam_monai.cli import COMMANDS
from pam_monai.data import synth

# experiment prints its docstring as written (pam_monai.experiments.runner.experiment)
FIRE_HELP = sorted(name for name in COMMANDS if name != "experiment")


def _args_as_written(doc: str) -> dict[str, str]:
    """Each argument's description in the docstring's Args section, whitespace-normalised."""
    section = re.search(r"^Args:\n(.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
    args, name = {}, None
    for line in section.group(1).splitlines():
        entry = re.match(r"    (\*{0,2}\w+): (.*)", line)
        if entry:
            name = entry.group(1).lstrip("*")
            args[name] = entry.group(2)
        else:
            args[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in args.items()}


@pytest.mark.parametrize("command", FIRE_HELP)
def test_help_shows_every_argument_description_whole(command):
    """Fire's docstring parser keeps only the text before the first ':' of a continuation line in
    Args, so `synth --help` lost --two_d and --sparse, and `score --help` what --label_map false
    does. Every argument's description must reach --help as written."""
    module, func = COMMANDS[command].split(":")
    doc = inspect.getdoc(getattr(importlib.import_module(module), func))
    shown = {a.name: " ".join((a.description or "").split()) for a in docstrings.parse(doc).args or []}
    for name, written in _args_as_written(doc).items():
        assert shown.get(name) == written, (
            f"{command} --help, --{name}:\nwritten: {written}\nshown:   {shown.get(name)}"
        )


@pytest.mark.parametrize(
    "command, given, meant",
    [("check", "--dataset_dir", "--root"), ("datalist", "--dataset-dir", "--root"), ("bundle", "--root", "--dataset_dir"),
     ("score", "--root", "--dataset_dir")],
)  # fmt: skip
def test_the_other_name_of_the_data_folder_flag_is_named(tmp_path, command, given, meant):
    """check and datalist take the data set's folder as --root, bundle, score and the bundles as
    --dataset_dir: a user who types the other name is told which one this command takes."""
    from pam_monai.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, *(["--dataset", "nnunet"] if command != "bundle" else []), given, str(tmp_path)])
    assert f"unknown flag(s) {given}; this command takes the data set's folder as {meant} (see" in str(
        exit_.value.code
    )


def test_top_level_help_says_what_each_command_does():
    """`python -m pam_monai --help` listed every command as "See pam_monai.x.y": nothing about what
    it does. Each now has a one-line summary, shown without importing its module."""
    from pam_monai.cli import SUMMARIES

    out = subprocess.run(
        [sys.executable, "-m", "pam_monai", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    text = " ".join((out.stdout + out.stderr).split())  # Fire writes help to stderr without a terminal
    assert sorted(SUMMARIES) == sorted(COMMANDS)
    for name, summary in SUMMARIES.items():
        assert f"{name} {summary} (python -m pam_monai {name} --help)" in text
    assert "See pam_monai" not in text


@pytest.mark.parametrize(
    "word, workflow", [("train", "training"), ("evaluate", "evaluating"), ("Infer", "inferring")]
)
def test_a_training_evaluation_or_inference_command_points_to_the_bundle_workflow(word, workflow):
    """`python -m pam_monai train` (or infer, evaluate) said only Fire's "Cannot find key: train":
    these are the bundles' workflows, and the message now gives the command to run."""
    from pathlib import Path

    from pam_monai.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([word])
    message = str(exit_.value.code)
    assert f"python -m monai.bundle run {workflow} --config_file " in message
    root = Path(__file__).resolve().parents[1]
    for config in re.findall(r"bundles/\w+/configs/\w+\.json", message):  # the files it names exist
        assert (root / config).is_file(), config


def test_a_misspelt_command_is_named_with_the_closest_one():
    from pam_monai.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["chek", "--root", "x"])
    assert "unknown command 'chek'; did you mean 'check'?" in str(exit_.value.code)


def test_output_in_an_encoding_without_the_data_folders_letters(tmp_path):
    """Windows writes a command's output to a file or a pipe in its code page: a data folder named in
    letters it lacks ended a finished check with a UnicodeEncodeError. They are written as escapes."""
    root = synth("nnunet", tmp_path / "Ωmega" / "Dataset900_Tumour", cases=3, slices=4, size=(40, 36))
    env = {
        **os.environ,
        "PYTHONIOENCODING": "ascii",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pam_monai", "check", "--dataset", "nnunet", "--root", str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode("ascii", "replace")
    assert str(root).replace("Ω", "\\u03a9").encode() in proc.stdout


@pytest.mark.parametrize(
    "windows, arg, quoted",
    [
        (False, "/data/my set", "'/data/my set'"),
        (False, "/data/O'Brien", "'/data/O'\"'\"'Brien'"),
        (True, r"C:\data\my set", r'"C:\data\my set"'),
        (True, r"C:\data\plain", r"C:\data\plain"),
        # cmd.exe would end the command at & (and run "D\data"); PowerShell refuses a bare &
        (True, r"C:\R&D\data", r'"C:\R&D\data"'),
        (True, r"C:\data(1);old", r'"C:\data(1);old"'),
        (True, "a,b", '"a,b"'),  # PowerShell: an array of two arguments
        (True, "", '""'),
        (True, 'say "hi"', r'"say \"hi\""'),
        (True, "C:\\my set\\", '"C:\\my set\\\\"'),
    ],
)
def test_printed_commands_quote_for_this_systems_shell(monkeypatch, windows, arg, quoted):
    """The commands we print to paste into a shell quoted paths the POSIX way, which cmd.exe and
    PowerShell read as part of the path."""
    from pam_monai import shell

    monkeypatch.setattr(shell, "_WINDOWS", windows)
    assert shell.quote(arg) == quoted


def test_printed_commands_use_the_system_quoting():
    """Every command printed for users goes through pam_monai.shell.quote; only the bundle README
    templates (documents with POSIX commands, rendered identically everywhere) use shlex."""
    root = Path(pam_monai.__file__).parent
    users = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "shlex.quote(" in p.read_text(encoding="utf-8")
    )
    assert users == ["bundle_templates/build.py", "shell.py"]
    build = (root / "bundle_templates" / "build.py").read_text(encoding="utf-8")
    # build.py's uses fill README.md.in's commands (its *_arg fields and the zip's exclusions), never a
    # printed command
    fields = [line.split('"')[1] for line in build.splitlines() if "shlex.quote(" in line and '": ' in line]
    assert fields == ["where_arg", "parent_arg", "name_arg"]
    others = [line.strip() for line in build.splitlines() if "shlex.quote(" in line and '": ' not in line]
    assert others == ['return " ".join(shlex.quote(f"{name}/{pattern}") for pattern in NOT_SHIPPED)']
    assert '"zip_excludes": _zip_excludes(name)' in build


def test_check_finds_own_data_by_its_dataset_json(tmp_path, capsys):
    """`check --root DIR` without --dataset stopped at Fire's bare "required argument: dataset"; a
    folder with a dataset.json is own data (nnunet), any other is asked which data set it holds."""
    from pam_monai.cli import main
    from pam_monai.data import synth

    # 3 cases: fewer leave fold 0 of the bundles' split without a training case, an ERROR of check's
    own = synth("nnunet", tmp_path / "own", cases=3, slices=3, size=(32, 32), test_cases=0)
    main(["check", "--root", str(own), "--quiet"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("OK: nnunet")
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--root", str(tmp_path)])
    assert f"{tmp_path}: which data set is it? Pass --dataset brats, isles, cityscapes or nnunet" in str(
        exit_.value.code
    )
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--dataset", "nnunet"])
    assert "give the data set's folder: --root DIR" in str(exit_.value.code)


def test_check_takes_the_data_set_a_synthetic_set_records(tmp_path, capsys):
    """`check --root DIR` on a set `synth` wrote asked which data set it is, though its synthetic.json
    records it: that one is checked, with a NOTE line saying so; a marker naming none still asks."""
    import json

    from pam_monai.cli import main

    main(
        ["synth", "--dataset", "BraTS", "--output", str(tmp_path / "brats"), "--cases", "1", "--slices", "4"]
    )
    capsys.readouterr()
    main(["check", "--root", str(tmp_path / "brats"), "--quiet"])
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[0] == (
        f"NOTE {tmp_path / 'brats'}: no --dataset; its synthetic.json (a synthetic set) records brats: "
        "checked as brats"
    )
    assert out[-1].startswith("OK: brats")
    (tmp_path / "brats" / "synthetic.json").write_text(json.dumps({"dataset": "mine"}))
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--root", str(tmp_path / "brats")])
    assert "which data set is it? Pass --dataset" in str(exit_.value.code)


def test_datalist_with_the_data_root_as_its_output_names_the_order(tmp_path):
    """`datalist nnunet ROOT OUT.json` (synth's order) took ROOT as the JSON to write and OUT.json as
    --root: "OUT.json/dataset.json not found", or, without OUT.json, "pass the data set's root"."""
    from pam_monai.cli import main

    # 3 cases: fewer leave fold 0 of the bundles' split without a training case, an ERROR of check's
    own = synth("nnunet", tmp_path / "own", cases=3, slices=3, size=(32, 32), test_cases=0)
    for extra in ([], [str(tmp_path / "out.json")]):
        with pytest.raises(SystemExit) as exit_:
            main(["datalist", "nnunet", str(own), *extra])
        assert (
            f"OUTPUT {own} is a folder (the data root?), and the datalist is a JSON file: "
            f"python -m pam_monai datalist nnunet OUT.json --root {own}" in str(exit_.value.code)
        )
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_commands_help_exits_with_status_0(command, capsys):
    """`synth --help` showed its help as an error with exit code 2: Fire hands --help to a function
    with **options as an option, and the call failed on the missing DATASET and OUTPUT (a script's
    `pam_monai synth --help && ...` stopped there). Every command's --help now exits with 0."""
    from pam_monai.cli import main

    try:
        main([command, "--help"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    assert code == 0, f"{command} --help exited with {code}:\n{out.err[-2000:]}"
    assert command in out.out + out.err


@pytest.mark.parametrize(
    "args",
    [["datalist", "--dataset", "brats", "--root", "ROOT", "--output"],
     ["synth", "--dataset", "brats", "--output", "--cases", "1"],
     ["datalist", "--dataset", "brats", "--root", "ROOT", "--output", "-"]],
)  # fmt: skip
def test_a_flag_that_takes_a_value_given_none_is_refused(tmp_path, monkeypatch, args):
    """`datalist ... --output` (its value forgotten, or `-` for standard output) wrote the datalist to
    a file named `True`, and `synth --output --cases 1` a data set into a folder `True`: Fire makes a
    flag without a value True. Such a flag is now refused before any work, naming it."""
    from pam_monai.cli import main

    monkeypatch.chdir(tmp_path)
    synth("brats", str(tmp_path / "ROOT"), cases=1, slices=2)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert "--output given without a value" in str(exit_.value.code)
    assert not (tmp_path / "True").exists()


def test_true_false_flags_still_stand_alone():
    """`--overwrite` alone is true, as before (and a flag with its value passes)."""
    from pam_monai.cli import flags_without_value
    from pam_monai.data.commands import synth as synth_command

    assert flags_without_value(synth_command, ["--output", "x", "--overwrite", "--cases", "-1"]) == []
    assert flags_without_value(synth_command, ["--output=x", "--overwrite"]) == []


def test_output_closed_by_its_reader_ends_quietly():
    """`python -m pam_monai experiment --help | head -2` ended with "pam_monai experiment: error:
    [Errno 32] Broken pipe": the reader closing the pipe was reported as the command's failure. It
    now ends quietly with a shell's SIGPIPE status, 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pam_monai", "experiment", "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        os.close(write_end)
    assert "Broken pipe" not in out.stderr and "error" not in out.stderr, out.stderr
    assert out.returncode == 141, (out.returncode, out.stderr)
