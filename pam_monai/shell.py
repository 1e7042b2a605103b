"""Arguments quoted for the commands we print for users to paste into their shell."""

from __future__ import annotations

import os
import re
import shlex

# cmd.exe and PowerShell read double quotes, not the single quotes of POSIX shells
_WINDOWS = os.name == "nt"
# what cmd.exe and PowerShell both read as plain text; anything else is quoted: & | < > ^ ( ) ;
# end or chain a command (R&D in a path), a comma makes an array in PowerShell, @ splats
_WINDOWS_PLAIN = re.compile(r"[\w+=:./\\-]+")


def quote(arg: str) -> str:
    """``arg`` as one argument of a command line in this system's shell: POSIX quoting
    (:func:`shlex.quote`), or on Windows double quotes around any argument that is not plain
    text, with the escapes of :func:`subprocess.list2cmdline` (which quotes only white space).

    Example::

        print(f"next: python -m pam_monai check --dataset nnunet --root {quote(str(path))}")
    """
    return _windows_quote(arg) if _WINDOWS else shlex.quote(arg)


def _windows_quote(arg: str) -> str:
    if _WINDOWS_PLAIN.fullmatch(arg):
        return arg
    # the C runtime's rules: backslashes before a quote, and at the end, are doubled; quotes escaped
    body = re.sub(r'(\\*)"', r'\1\1\\"', arg)
    body = re.sub(r"(\\+)$", r"\1\1", body)
    return f'"{body}"'
