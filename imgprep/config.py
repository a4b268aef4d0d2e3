"""`setting()`: a dataclass field that also carries its help text, choices and range.

Every command's settings are a frozen dataclass whose fields are declared with `setting`; the CLI
builds its options from those fields (flag name, type, default, help, choices, range), so each
default and each list of choices is stated once, here in the library, and a command is
`run(Config(**options))`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, field
from typing import Any

from .errors import ImgprepError

__all__ = ["setting", "Settings", "check_settings", "flag"]

# The bound of every seed: numpy's generators take no negative seed.
SEED_MIN = 0


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    sep: str = ",",
    cli: bool = True,
    path: bool = False,
    default_factory: Callable | None = None,
):
    """A dataclass field with what a user needs to know about it.

    Args:
        default: the default value (or `default_factory` for a mutable one).
        help: one line for `--help`.
        choices: the allowed values (a library constant, never a retyped list).
        min, max, min_open, max_open: the allowed range of a number.
        sep: separator of a tuple value written on the command line (`1,2,4`).
        cli: False for a setting that has no command-line option.
        path: the value is a file or folder path.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "min": min,
        "max": max,
        "min_open": min_open,
        "max_open": max_open,
        "sep": sep,
        "cli": cli,
        "path": path,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line flag of a field name: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def _bad_number(value, meta: dict) -> str | None:
    """Why `value` breaks the range in a setting's metadata (NaN and infinities never pass), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value <= lo if meta.get("min_open") else value < lo):
        return f"must be {'above' if meta.get('min_open') else 'at least'} {lo:g}"
    if hi is not None and (value >= hi if meta.get("max_open") else value > hi):
        return f"must be {'below' if meta.get('max_open') else 'at most'} {hi:g}"
    return None


def check_settings(cfg) -> None:
    """Check every `setting` field of a config dataclass against its declaration (range, finite
    numbers, choices), for the CLI and the Python API alike; ImgprepError naming the flag.
    Cross-field rules stay in each config's `validate`."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        meta = f.metadata
        if not meta:
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            why = _bad_number(v, meta)
            if why is None and meta.get("choices") is not None and v is not None and v not in meta["choices"]:
                why = f"one of {', '.join(map(str, meta['choices']))}"
            if why is not None:
                raise ImgprepError(f"{flag(f.name)} {v!r}: {why}")


class Settings:
    """Base of every command's config dataclass: each instance, however it is made (the CLI,
    `Config(...)` in Python, `dataclasses.replace`), is checked against its fields' declarations."""

    def __post_init__(self):
        check_settings(self)
