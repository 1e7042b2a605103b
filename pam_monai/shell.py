"""Arguments quoted for the commands we print for users to paste into their shell."""

from __future__ import annotations

import os
import shlex
import subprocess

# cmd.exe and PowerShell read double quotes, not the single quotes of POSIX shells
_WINDOWS = os.name == "nt"


def quote(arg: str) -> str:
    """``arg`` as one argument of a command line in this system's shell: POSIX quoting
    (:func:`shlex.quote`), or on Windows the double-quote rules of :func:`subprocess.list2cmdline`.

    Example::

        print(f"next: python -m pam_monai check --dataset nnunet --root {quote(str(path))}")
    """
    return subprocess.list2cmdline([arg]) if _WINDOWS else shlex.quote(arg)
