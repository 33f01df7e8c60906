"""`microfer bench` (per-stage latency of predict, the model path, prepare throughput) and
`microfer demo` (the whole pipeline on synthetic clips)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click

from microfer.bench.serve_load import bench_serve, format_serve
from microfer.bench.spot_long import bench_spot, format_spot
from microfer.io import write_json


@click.command("bench")
@click.argument(
    "what",
    type=click.Choice(["predict", "prepare", "spot", "serve", "face", "all"]),
    default="all",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="bundle folder from `microfer train`; without it a MobileViT bundle is trained on the quick "
    "demo's clips first (about 35 s)",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="timed predict runs per mode (after one warm-up); the median is reported",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch and OpenCV (default: theirs)",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="prepare: worker processes",
)
@click.option(
    "--subjects",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="prepare: subjects in the synthetic set",
)
@click.option(
    "--clips-per-subject",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="prepare: clips per subject in the synthetic set",
)
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="face: the face image to predict [default: a shipped portrait]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="write bench.json (all numbers + machine) and bench_stages.png here",
)
def bench_cmd(what, model, runs, threads, workers, subjects, clips_per_subject, image, out):
    """Time microfer on this machine.

    \b
    predict  per-stage latency of one prediction on a 60-frame 640x480 synthetic video,
             frames given and all spotted (median of --runs); the model path alone
             (input + network + SVM, vs the published method's 35.4 ms/sample); feature
             extraction throughput; and the latency goals, met or missed.
    prepare  clips/s of `prepare` on a synthetic CASME II set (640x480, 40-100 frames),
             and of a bare dlib + DIS-flow script on the same clips with the same
             workers (start-up included in both); the goal prepare >= 0.5 x bare.
    face     `microfer predict FACE.jpg` with no --model (the shipped image model) from the
             shell, a new process per run (median of --runs; goals <= 1 s, <= 300 MB);
             --image names the face (default: a shipped portrait).
    spot     frames/s of `microfer spot` on a 2,000-frame 640x480 video and its peak
             memory there and at 20,000 frames (goals: >= 200 frames/s, memory flat);
             not part of `all` (it writes a 20,000-frame video first).
    serve    `microfer serve` under load on 127.0.0.1: 3 bursts of 20 concurrent uploads
             of a 60-frame clip (all 200, no tracebacks), its resident memory before,
             during and after (goal: back within 50 MB of the baseline), then 50
             stalled connections while the page must still answer; not part of `all`.
    all      predict and prepare (default).

    predict also runs `microfer predict` from the shell (a new process: start-up, imports and
    model loading included) and checks its label and scores against torch.

    Without --model, a MobileViT bundle is first trained on the quick demo's clips (about
    35 s, not timed). At the end, every goal with its measured figure and ratio.
    """
    from microfer.bench.prepare import bench_prepare, format_prepare
    from microfer.bench.suite import bench_predict, demo_bundle, format_predict, write_results

    if what == "serve":
        _bench_serve(model, threads, out)
        return
    if what == "face":
        from microfer.bench.face_predict import bench_face, format_face

        face_result = bench_face(image, runs=runs)
        click.echo(format_face(face_result))
        if out is not None:
            write_json(out / "bench_face.json", face_result)
            click.echo(f"wrote {out / 'bench_face.json'}")
        return
    if what == "spot":
        spot_result = bench_spot(echo=click.echo)
        click.echo(format_spot(spot_result))
        if out is not None:
            write_json(out / "bench_spot.json", spot_result)
            click.echo(f"wrote {out / 'bench_spot.json'}")
        return
    predict_result = prepare_result = None
    if what in ("predict", "all"):
        context = nullcontext(model) if model is not None else demo_bundle(echo=click.echo)
        with context as bundle:
            click.echo(
                f"timing predict ({runs} runs per mode, 50 model-path runs, 64 clips of features) ..."
            )
            predict_result = bench_predict(bundle, runs=runs, threads=threads)
        click.echo(format_predict(predict_result))
    if what in ("prepare", "all"):
        if predict_result is not None:
            click.echo("")
        click.echo(
            f"timing prepare and the bare dlib + DIS script on a synthetic CASME II set "
            f"({subjects * clips_per_subject} clips, {workers} workers) ..."
        )
        prepare_result = bench_prepare(
            workers=workers, subjects=subjects, clips_per_subject=clips_per_subject, verbose=False
        )
        click.echo(format_prepare(prepare_result))
    if predict_result is not None and prepare_result is not None:
        from microfer.bench.suite import format_goals

        click.echo("")
        click.echo(format_goals(predict_result["goals"], prepare_result.get("goals")))
    if out is not None:
        paths = write_results(out, predict=predict_result, prepare=prepare_result)
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _bench_serve(model, threads, out) -> None:
    import tempfile

    from microfer.bench.suite import demo_bundle, machine_info, make_bench_clip

    context = nullcontext(model) if model is not None else demo_bundle(echo=click.echo)
    with context as bundle, tempfile.TemporaryDirectory(prefix="microfer-bench-serve-") as tmp:
        clip = make_bench_clip(Path(tmp))["video"]
        result = bench_serve(bundle, clip, threads=threads or 1, echo=click.echo)
    result["machine"] = machine_info()
    click.echo(format_serve(result))
    if out is not None:
        write_json(out / "bench_serve.json", result)
        click.echo(f"wrote {out / 'bench_serve.json'}")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("microfer-demo"),
    show_default=True,
    help="everything the demo writes goes here",
)
@click.option("--quick", is_flag=True, help="a smaller composite (for CI and a first look)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--faces",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="face photos to use instead of the shipped public-domain ones",
)
@click.option("--no-progress", is_flag=True)
@click.option(
    "--force", is_flag=True, help="write into a non-empty --out folder that no demo wrote"
)
def demo_cmd(out, quick, seed, faces, no_progress, force):
    """Run the whole pipeline on synthetic clips made from shipped faces: synth, prepare,
    LOSO on the MEGC2019 composite protocol, train a bundle, predict held-out videos."""
    from microfer.bench.demo import run_demo

    r = run_demo(
        out,
        quick=quick,
        seed=seed,
        faces=faces,
        echo=click.echo,
        progress=not no_progress,
        force=force,
    )
    m = r.loso_metrics
    click.echo("")
    click.echo("LOSO (megc2019-composite, synthetic):")
    for name, s in (("model", m["pooled"]), ("majority baseline", m["majority"])):
        click.echo(
            f"  {name:<18} UF1 {s['uf1']:.3f}  UAR {s['uar']:.3f}  accuracy {s['accuracy']:.3f}"
        )
    click.echo("held-out videos (truth -> predicted with spotted frames / with true frames):")
    for p in r.predictions:
        click.echo(
            f"  {Path(p['video']).name}: {p['truth']} -> {p['predicted_spotted']} / {p['predicted_given']}"
            f"   apex true {p['apex_true']}, spotted {p['apex_spotted']}   {p['ms']:.0f} ms"
        )
    click.echo(f"report: {r.report_dir / 'report.md'} (+ confusion.png, per_subject.png)")
    click.echo(
        f"bundle: {r.bundle}    try: microfer predict {r.predictions[0]['video']} --model {r.bundle}"
    )
    click.echo("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r.seconds.items()))


@click.command("spot-seeds")
@click.option(
    "--layout",
    "layouts",
    type=click.Choice(["casme_sq", "samm_lv"]),
    multiple=True,
    default=("casme_sq", "samm_lv"),
    show_default=True,
    help="synthetic long-video layouts (repeatable)",
)
@click.option(
    "--dev",
    type=int,
    multiple=True,
    default=(1, 2),
    show_default=True,
    help="development seeds (repeatable): design choices may be made on these",
)
@click.option(
    "--held-out",
    type=int,
    multiple=True,
    default=(101, 102, 103),
    show_default=True,
    help="held-out seeds (repeatable): never tuned on; disjoint from --dev",
)
@click.option(
    "--subjects", type=click.IntRange(min=2), default=10, show_default=True, help="per set"
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="the generated sets, each seed's spot-eval run, spot_seeds.json / .md / .png",
)
@click.option(
    "--from-runs",
    is_flag=True,
    help="aggregate the spot-eval runs already in --out again (nothing generated or evaluated)",
)
@click.option(
    "--background-video",
    "backgrounds",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="make each set of this REAL face video (repeatable) with known intervals injected "
    "(`synth --background-video`) instead of rendered faces",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="--background-video: seconds a video (ping-pong beyond the background's length)",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def spot_seeds_cmd(layouts, dev, held_out, subjects, out, from_runs, backgrounds, seconds, quiet):
    """spot-eval on a fresh synthetic long-video set per seed; mean, sd and range of each F1,
    development seeds and held-out seeds in separate rows (a development number never enters
    the held-out row)."""
    from microfer.bench.spot_seeds import format_table, read_seed_run, run_seed, run_spot_seeds

    if seconds is not None and not backgrounds:
        raise click.UsageError("--seconds goes with --background-video")
    doc = run_spot_seeds(
        layouts,
        out,
        dev=dev,
        held_out=held_out,
        subjects=subjects,
        progress=not quiet,
        run_one=read_seed_run if from_runs else run_seed,
        backgrounds=[b.resolve() for b in backgrounds],
        seconds=seconds,
    )
    click.echo(format_table(doc))
    click.echo(f"wrote {out / 'spot_seeds.json'}, {out / 'spot_seeds.md'}")
