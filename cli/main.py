"""`imgprep` console script: one click group, one thin command per library entry point.

Each command's options come from its config dataclass (`options.config_options`), so a command
is `run(Config(**options))`. The commands live in `prepare`, `data`, `load`, `train` and `bench` and are
imported only when one of them runs (`LazyGroup`): `imgprep prepare` loads click and
`imgprep.prepare`, not the trainer's, loader's or object-store client's modules, which is ~0.05 s
of every start that each run of a sharded job pays whole. Heavy libraries (cv2, torch, DALI) are
imported inside the commands that use them.
"""

from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of its click command, in the order `imgprep --help` lists them
COMMANDS = {
    "synth": "imgprep.cli.data:synth",
    "prepare": "imgprep.cli.prepare:prepare",
    "upload": "imgprep.cli.data:upload",
    "verify": "imgprep.cli.data:verify",
    "stats": "imgprep.cli.data:stats",
    "load": "imgprep.cli.load:load",
    "train": "imgprep.cli.train:train",
    "eval": "imgprep.cli.train:eval_",
    "plot": "imgprep.cli.train:plot",
    "demo": "imgprep.cli.train:demo",
    "bench": "imgprep.cli.bench:bench",
    "experiment": "imgprep.cli.train:experiment",
}


class OneLineErrors(click.Group):
    """A group whose usage errors (unknown flag, bad value) print as one line, not a usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "imgprep"
            click.echo(f"Error: {e.format_message().rstrip('.')}; see '{cmd} --help'", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class LazyGroup(OneLineErrors):
    """The sub-commands of `COMMANDS`, each imported the first time it is asked for."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert cmd.name == name, f"{COMMANDS[name]} is the command {cmd.name!r}, not {name!r}"
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="imgprep")
def main() -> None:
    """imgprep: ImageNet to AlexNet-ready WebDataset shards, a DALI loader and a two-tower trainer."""


if __name__ == "__main__":
    main()
