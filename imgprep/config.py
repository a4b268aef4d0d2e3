"""`setting()`: a dataclass field that also carries its help text, choices and range.

Every command's settings are a frozen dataclass whose fields are declared with `setting`; the CLI
builds its options from those fields (flag name, type, default, help, choices, range), so each
default and each list of choices is stated once, here in the library, and a command is
`run(Config(**options))`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, field
from typing import Any

__all__ = ["setting"]


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
