"""The `microfer` command line: a thin shell over the library.

Each command lives in a small module of this package and is imported only when it is
run, so `microfer --help` stays fast (torch is never imported for it).
"""
from __future__ import annotations

import importlib
import os

import click

# command name -> "module:function" inside microfer.cli
COMMANDS = {
    "datasets": "data:datasets_cmd",
    "manifest": "data:manifest_cmd",
    "synth": "synth:synth_cmd",
    "prepare": "prepare:prepare_cmd",
    "pretrain": "evaluate:pretrain_cmd",
    "loso": "evaluate:loso_cmd",
    "train": "predict:train_cmd",
    "predict": "predict:predict_cmd",
    "demo": "predict:demo_cmd",
    "bench": "bench:bench_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            mod = importlib.import_module(f"microfer.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"microfer.cli.{module}":
                return None
            raise
        return getattr(mod, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microfer")
def cli():
    """microfer: micro-expression recognition, from dataset to LOSO report."""
    # Never reach for a model hub: everything microfer needs is on disk.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from microfer.errors import MicroferError

    try:
        cli(standalone_mode=False)
    except MicroferError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code)
