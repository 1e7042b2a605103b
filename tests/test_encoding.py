"""Text files are written and read as UTF-8 whatever the user's locale.

Without ``encoding=`` Python uses the locale's encoding: an ANSI code page on Windows (cp1252 in
Western Europe), so a ``results.md`` with "±" or a ``metrics.csv`` with a case named "Müller" was
written in a machine's own encoding (or not at all: "Ω" has no cp1252 byte) and read back wrong on
another. The tests run the writers in a locale whose encoding is ASCII (stricter than cp1252,
which breaks on names outside Western Europe only).
"""

import ast
import os
import subprocess
import sys
import textwrap

from conftest import ROOT

# PYTHONUTF8=0 and PYTHONCOERCECLOCALE=0: Python must not switch to UTF-8 on its own in the C locale
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
NAME = "Müller_Ω_001"  # a case named after a patient's or a site's file name
TEXT = f"IoU 66.48 ± 1.04 ({NAME})"


def _run_in_ascii_locale(code: str, *args) -> str:
    """Run ``code`` in a fresh interpreter whose default text encoding is ASCII; return its stdout.
    ``code`` and ``args`` must be ASCII there: non-ASCII text goes in as ``ascii()`` literals."""
    env = {
        **os.environ,
        **ASCII_LOCALE,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    check = (
        "import locale; assert locale.getpreferredencoding(False).lower() in ('ansi_x3.4-1968', 'ascii')\n"
    )
    cmd = [sys.executable, "-c", check + textwrap.dedent(code), *map(str, args)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc.stdout.decode("ascii")


def test_atomic_write_text_writes_utf8_in_any_locale(tmp_path):
    _run_in_ascii_locale(
        """
        import sys
        from pam_monai.atomic import atomic_write_text
        atomic_write_text(sys.argv[1], TEXT)
        """.replace("TEXT", ascii(TEXT)),
        tmp_path / "results.md",
    )
    assert (tmp_path / "results.md").read_bytes() == TEXT.encode()


def test_case_tables_round_trip_a_non_ascii_case_in_any_locale(tmp_path):
    """A run's ``metrics.csv`` and paper-protocol CSV: written and read back by the experiment
    runner (``read_case_metrics``, ``read_paper_protocol``) with the case name intact."""
    out = _run_in_ascii_locale(
        """
        import sys
        from pathlib import Path
        from pam_monai.engines.case_metrics import write_case_metrics
        from pam_monai.experiments.predict import PAPER_PROTOCOL_FIELDS, read_paper_protocol, write_paper_protocol
        from pam_monai.experiments.results import read_case_metrics

        out, name = Path(sys.argv[1]), NAME
        row = dict(case=name, iou=0.5, dice=0.6, hd95=1.0, fp_rate=0.0, fn_rate=0.1, target_empty=False, pred_empty=False)
        write_case_metrics([row], out)
        pp = {k: 1 for k in PAPER_PROTOCOL_FIELDS} | {"case": name}
        write_paper_protocol([pp], out / "paper_protocol.csv")
        print(ascii([read_case_metrics(out / "metrics.csv")[0]["case"], read_paper_protocol(out / "paper_protocol.csv")[0]["case"]]))
        """.replace("NAME", ascii(NAME)),
        tmp_path,
    )
    assert out.strip() == ascii([NAME, NAME])
    assert NAME.encode() in (tmp_path / "metrics.csv").read_bytes()
    assert NAME.encode() in (tmp_path / "paper_protocol.csv").read_bytes()


def _unspecified_encodings(path) -> list[str]:
    """``open(...)`` in text mode, ``Path.read_text()`` / ``write_text()`` without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            found.append(f"{path}:{node.lineno}: .{func.attr}() without encoding=")
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = (
                node.args[1]
                if len(node.args) > 1
                else next((k.value for k in node.keywords if k.arg == "mode"), None)
            )
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                found.append(f"{path}:{node.lineno}: open() in text mode without encoding=")
    return found


def test_every_text_file_of_the_package_names_its_encoding():
    """A guard for the paths the tests above do not run (ruff's PLW1514 sees only ``Path(...).read_text``)."""
    found = [f for p in sorted((ROOT / "pam_monai").rglob("*.py")) for f in _unspecified_encodings(p)]
    assert not found, "pass encoding='utf-8' (utf-8-sig for a user's JSON or list file):\n" + "\n".join(found)
