"""Click options built from a command's config dataclass (`imgprep.config.setting` fields).

`@config_options(PrepareConfig, skip=("src", "out"))` adds `--size`, `--quality`, ... with the
field's type, default, help, choices and range, so that the command body is `Config(**options)`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing

import click

from imgprep.errors import ImgprepError

__all__ = ["config_options", "workers_option", "parse_list", "user_errors"]


def parse_list(value, item_type: type, sep: str = ","):
    """'1,2,4' -> (1, 2, 4); a tuple stays as it is; None or '' -> ()."""
    if value is None or isinstance(value, tuple):
        return value or ()
    try:
        return tuple(item_type(v.strip()) for v in value.split(sep) if v.strip())
    except ValueError:
        kind = "whole numbers" if item_type is int else "numbers" if item_type is float else "values"
        raise click.BadParameter(f"{value!r}: give {kind} separated by {sep!r}") from None


def _number_type(kind: type, meta: dict):
    if meta["min"] is None and meta["max"] is None:
        return kind
    if kind is int:
        return click.IntRange(meta["min"], meta["max"], min_open=meta["min_open"], max_open=meta["max_open"])
    return click.FloatRange(meta["min"], meta["max"], min_open=meta["min_open"], max_open=meta["max_open"])


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _option(f: dataclasses.Field, hint) -> typing.Callable:
    """The click option of one field."""
    meta = {
        "help": "",
        "choices": None,
        "min": None,
        "max": None,
        "min_open": False,
        "max_open": False,
        "sep": ",",
        "path": False,
        **f.metadata,
    }
    flag = "--" + f.name.replace("_", "-")
    default = _default(f)
    kw = {"default": default, "help": meta["help"], "show_default": default not in (None, (), "")}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":  # X | None: an optional X
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, **kw)
    if origin is tuple:  # tuple[X, ...]
        item = args[0]
        if meta["choices"] is not None:  # repeatable choice: --remove conv3 --remove conv5
            return click.option(
                flag,
                f.name,
                type=click.Choice(meta["choices"]),
                multiple=True,
                **{**kw, "default": default, "show_default": False},
            )
        sep = meta["sep"]
        shown = sep.join(str(v) for v in default) if default else None
        return click.option(
            flag,
            f.name,
            default=shown,
            help=meta["help"],
            show_default=bool(shown),
            callback=lambda ctx, param, value, item=item, sep=sep: parse_list(value, item, sep),
        )
    if meta["choices"] is not None:
        return click.option(flag, f.name, type=click.Choice(meta["choices"]), **kw)
    if hint in (int, float):
        return click.option(flag, f.name, type=_number_type(hint, meta), **kw)
    if meta["path"]:
        return click.option(flag, f.name, type=click.Path(), **kw)
    return click.option(flag, f.name, type=str, **kw)


def config_options(cls, skip: typing.Iterable[str] = ()):
    """Decorator: one click option per `setting` field of the dataclass `cls` (in field order),
    leaving out `skip` (positional arguments, say) and fields marked `cli=False`."""
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    chosen = [f for f in dataclasses.fields(cls) if f.name not in skip and f.metadata.get("cli", True)]
    chosen.sort(key=lambda f: bool(f.kw_only))  # inherited groups (LoaderSettings) after the command's own

    def decorate(fn):
        for f in reversed(chosen):  # click lists options in decoration order, innermost first
            fn = _option(f, hints[f.name])(fn)
        return fn

    return decorate


def workers_option(fn):
    """--workers, for commands whose worker count is not a config field."""
    return click.option(
        "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Worker processes (0: all cores)."
    )(fn)


def user_errors(fn):
    """Turn library errors, and file-system errors nothing else caught, into a one-line message and
    exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImgprepError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a path the library did not name itself: an --out in a missing or read-only folder
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}; check the path and its permissions") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
