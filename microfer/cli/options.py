"""Options several commands share, in one place (their help text included)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from microfer.clip.frames import MAX_FPS


def jobs_option(*param_decls: str, **kwargs):
    """A joblib-style --jobs: a number of processes >= 1, or -1 for all cores."""

    def check(ctx, param, value):
        if value is not None and value != -1 and value < 1:
            raise click.BadParameter(
                f"{value} is not a number of jobs: give 1 or more, or -1 for all cores"
            )
        return value

    return click.option(*param_decls, type=int, callback=check, **kwargs)


WEIGHTS_OPTION = click.option(
    "--weights",
    default="default",
    show_default=True,
    metavar="default|none|PATH",
    help="pretrained weights: 'default' = the shipped macro-expression trunk (mobilevit_xxs) "
    "(microfer/weights/mobilevit_xxs_macro.json), 'none' = randomly initialised (ablation), "
    "or a weights folder / .json from `microfer pretrain`",
)
# the names of microfer.learn.evaluate.FEATURE_GRIDS (spelt out: --help must not import the library)
GRID_OPTION = click.option(
    "--grid",
    type=click.Choice(
        [
            "small",
            "motion",
            "raw",
            "network",
            "cnn",
            "motion_cnn",
            "stack",
            "stack_cnn",
            "stack_apex",
            "full",
        ]
    ),
    default="small",
    show_default=True,
    help="feature x SVM grid searched inside each training fold: small (default: motion "
    "descriptors and the shipped FER teacher on the apex face), motion, raw (the raw-flow floor), "
    "network (0.1's), cnn (a small CNN ensemble trained inside each fold), motion_cnn (the "
    "descriptors and that CNN, chosen by inner CV: slow), stack / stack_cnn / stack_apex "
    "(the descriptors' scores, with the CNN's or the FER teacher's apex reading, stacked with "
    "weights from inner folds), full (all of them, more networks, the "
    "descriptor + network fusions and MobileViT fine-tuned in-fold)",
)

FEATURES_OPTION = click.option(
    "--features",
    multiple=True,
    metavar="SET",
    help="feature set(s) to choose among instead of the grid's (repeatable), written as the report names "
    "them: 'flow_grid14/flow', 'mobilevit_xxs/apex/final/avg', 'flow_grid14/flow + mobilevit_xxs/apex/final/avg'",
)

SCHEDULER_OPTION = click.option(
    "--scheduler",
    default=None,
    metavar="local|ADDRESS",
    help="run the parallel work (clips, folds, permutations, grid search candidates) on a dask.distributed "
    "cluster instead of local processes (--workers / --jobs): 'local' (2 worker processes here) or a "
    "scheduler address such as tcp://HOST:8786 (docs/speed.md, 'Scaling out'; needs pip install 'microfer[dask]'); "
    "the results are those of a run without it",
)


def command_line(ctx: click.Context, leave_out: tuple[str, ...] = ()) -> str:
    """The command that reproduces this invocation: every option spelt out, defaults included
    (so a later change of a default cannot change what it means)."""
    import shlex

    words = ["microfer", ctx.info_name or ""]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in leave_out:
            continue
        value = ctx.params.get(param.name)
        if value is None or value == ():
            continue
        if param.is_flag:
            if param.secondary_opts:
                words.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                words.append(param.opts[0])
            continue
        for v in value if param.multiple else [value]:
            words += [param.opts[0], str(v)]
    return shlex.join(words)


def finite_option(*param_decls: str, low: float, high: float, **kwargs):
    """A float option inside [low, high] (click's FloatRange lets nan and inf through)."""

    def check(ctx, param, value):
        if value is not None and (not math.isfinite(value) or not low <= value <= high):
            raise click.BadParameter(f"{value} is not a number in {low:g}..{high:g}")
        return value

    return click.option(*param_decls, type=float, callback=check, **kwargs)


def fps_option(help: str):

    return finite_option("--fps", low=0.01, high=MAX_FPS, default=None, help=help)


PROTOCOL_OPTION = click.option(
    "--protocol", required=True, help="protocol name (protocols/*.yaml), e.g. megc2019-composite"
)
CACHE_OPTION = click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="prepare cache (settings folder, or its parent holding exactly one)",
)
MANIFESTS_OPTION = click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="use this manifest instead of the protocol's shipped one (e.g. a synthetic dataset); "
    "repeat to pool several",
)
