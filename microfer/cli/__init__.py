"""The `microfer` command line: a thin shell over the library.

Each command lives in a small module of this package and is imported only when it is
run, so `microfer --help` stays fast (torch is never imported for it).

Exit codes (the same for every command; docs/bad-input.md):
    0  all good
    1  a bug in microfer (a traceback: please report it)
    2  bad input or nothing usable: one line `error: ...` naming the file and the problem
       (a MicroferError, an OSError on a path such as a read-only or full output folder,
       a usage error of the options); nothing, or nothing new, was written
    3  finished, the output was written, but some clips failed, samples were excluded or
       rows were dropped: they are listed above the closing `incomplete: ...` line
    130 interrupted
"""

from __future__ import annotations

import importlib
import os
import warnings

import click

from microfer.cli.options import jobs_option  # noqa: F401  (importable from here too)
from microfer.errors import MicroferError

# command name -> "module:function" inside microfer.cli
# (the modules mirror the wings: data and synth, prepare (clip), learn and pretrain,
# recognise, spotting, bench)
COMMANDS = {
    "datasets": "data:datasets_cmd",
    "manifest": "data:manifest_cmd",
    "synth": "synth:synth_cmd",
    "prepare": "prepare:prepare_cmd",
    "pretrain": "pretrain:pretrain_cmd",
    "pretrain-report": "pretrain:pretrain_report_cmd",
    "loso": "learn:loso_cmd",
    "train": "learn:train_cmd",
    "train-images": "learn:train_images_cmd",
    "image-model": "image_model:image_model_cmd",
    "predict": "recognise:predict_cmd",
    "serve": "recognise:serve_cmd",
    "spot": "spotting:spot_cmd",
    "spot-eval": "spotting:spot_eval_cmd",
    "spot-seeds": "bench:spot_seeds_cmd",
    "live": "spotting:live_cmd",
    "bench": "bench:bench_cmd",
    "demo": "bench:demo_cmd",
}


EXIT_OK, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 2, 3


class Incomplete(click.ClickException):
    """The command finished and wrote its output, but not everything went in (exit 3)."""

    exit_code = EXIT_INCOMPLETE

    def show(self, file=None) -> None:
        click.echo(f"incomplete: {self.format_message()}", err=True)


def finish(problems: int, what: str) -> None:
    """End a command that wrote its output: exit 0, or exit 3 when `problems` (> 0) of
    `what` did not make it, e.g. finish(3, "of 162 clips failed (listed above)")."""
    if problems:
        raise Incomplete(f"{problems} {what}; exit code {EXIT_INCOMPLETE}")


def os_error_line(exc: OSError) -> str:
    """`<path>: <problem>` of an OSError (read-only folder, a path under a file, disk full...)."""
    problem = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, getattr(exc, "filename2", None)) if n]
    return ": ".join([*(os.fsdecode(n) for n in names), problem])


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one microfer line, without the Python source path and line."""
    text = " ".join(str(message).split())
    click.echo(f"warning: {text}", err=True)


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


def main(args=None) -> None:
    """Entry point: run the command and turn its outcome into the exit codes above."""

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        rc = cli(args=args, standalone_mode=False)
    except MicroferError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code)
    except OSError as exc:  # an output (or input) path the system refused: one line, no traceback
        click.echo(f"error: {os_error_line(exc)}", err=True)
        raise SystemExit(EXIT_BAD_INPUT)
    finally:
        warnings.showwarning = shown
    if isinstance(rc, int) and not isinstance(rc, bool) and rc:
        raise SystemExit(rc)  # a command's ctx.exit(code)
