"""Command line: ``python -m pam_monai <command> [--flags]`` (Python Fire).

Each command lives in the module that owns the work; this file only dispatches, importing
lazily so that ``python -m pam_monai --help`` stays fast.
"""

from __future__ import annotations

import importlib

# command name -> "module:function"
COMMANDS = {
    "datalist": "pam_monai.data.commands:datalist",
    "synth": "pam_monai.data.commands:synth",
    "check": "pam_monai.data.commands:check",
    "experiment": "pam_monai.experiments.runner:experiment",
    "bench": "pam_monai.bench:bench",
}


def _lazy(target: str):
    module, func = target.split(":")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), func)(*args, **kwargs)

    call.__name__ = func
    call.__doc__ = f"See {module}.{func} (python -m pam_monai {func} --help)."
    return call


def main(argv: list[str] | None = None) -> None:
    import sys

    import fire

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        # resolve the real function so that --help shows its own docstring and arguments
        module, func = COMMANDS[argv[0]].split(":")
        fire.Fire(
            getattr(importlib.import_module(module), func), command=argv[1:], name=f"pam_monai {argv[0]}"
        )
        return
    fire.Fire({name: _lazy(t) for name, t in COMMANDS.items()}, command=argv, name="pam_monai")
