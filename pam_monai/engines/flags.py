"""``as_bool``: a command-line flag (``--resume true``, ``--fast false``) as a bool."""

from __future__ import annotations

__all__ = ["as_bool"]


def as_bool(value) -> bool:
    """A command-line flag as a bool: ``--resume true`` arrives as the string "true" (Fire parses
    only ``True``/``False``), and a plain ``bool("false")`` would be True."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean flag: {value!r} (use true or false)")
    return bool(value)
