"""`microfer train`, `microfer predict` and `microfer demo`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from microfer.cli import finish
from microfer.cli.evaluate import FEATURES_OPTION, GRID_OPTION, SCHEDULER_OPTION, WEIGHTS_OPTION


@click.command("train")
@click.option("--protocol", required=True, help="protocol name (protocols/*.yaml), e.g. megc2019-composite")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="prepare cache (settings folder, or its parent holding exactly one)")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False), multiple=True,
              help="manifest CSV(s) instead of the protocol's shipped one (repeatable)")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="bundle folder to write")
@GRID_OPTION
@FEATURES_OPTION
@click.option("--seed", type=int, default=0, show_default=True, help="network initialisation seed")
@WEIGHTS_OPTION
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for feature extraction")
@SCHEDULER_OPTION
def train_cmd(protocol, cache, manifest, out, grid, features, seed, weights, threads, scheduler):
    """Fit the whole pipeline on all subjects of PROTOCOL (grid search inside) and write a model bundle."""
    from microfer.evaluate import LosoSettings
    from microfer.models import resolve_weights
    from microfer.train import train_bundle

    settings = LosoSettings(grid=grid, features=tuple(features), seed=seed, num_threads=threads,
                            block_weights=resolve_weights(weights), scheduler=scheduler)
    result = train_bundle(protocol, cache, out, manifest=list(manifest) or None, settings=settings)
    c = result.choice
    click.echo(f"trained on {result.n_samples} samples of {result.n_subjects} subjects "
               f"({', '.join(f'{k} {v}' for k, v in result.class_counts.items())}); {result.excluded} excluded")
    click.echo(f"chosen by inner leave-subject-out: {c.feature_name}, SVM {c.params} (inner UF1 {c.inner_score:.3f})")
    click.echo(f"wrote {result.bundle}")
    finish(result.excluded, f"of {result.n_samples + result.excluded} samples excluded (not prepared, or failed "
                            f"in prepare: `microfer loso` lists them)")


@click.command("predict")
@click.argument("clip", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path), required=True, help="bundle folder from `microfer train`")
@click.option("--onset", type=int, default=None, help="onset frame (folder: number in the file name; video: index)")
@click.option("--apex", type=int, default=None, help="apex frame (spotted when absent; a given apex is used as given, or refused when it is not inside onset..offset or the face is not there)")
@click.option("--offset", type=int, default=None, help="offset frame (spotted when absent)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the network")
@click.option("--runtime", type=click.Choice(["auto", "onnx", "torch"]), default="auto", show_default=True,
              help="what runs the network: the bundle's ONNX export in onnxruntime (fast start, no torch), "
                   "or torch; auto = onnx when the bundle has it")
@click.option("--explain", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="write apex_face.png and flow.png here: occlusion-sensitivity overlays of where the "
                   "decision came from (re-runs features + SVM per patch: slower)")
def predict_cmd(clip, model, onset, apex, offset, as_json, threads, runtime, explain):
    """Emotion of one CLIP: a video file (mp4/avi/mov) or a folder of frames."""
    from microfer.predict import Predictor

    result = Predictor(model, num_threads=threads, runtime=runtime).predict(clip, onset=onset, apex=apex,
                                                                            offset=offset, explain=explain)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("microfer-demo"),
              show_default=True, help="everything the demo writes goes here")
@click.option("--quick", is_flag=True, help="a smaller composite (for CI and a first look)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--faces", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="face photos to use instead of the shipped public-domain ones")
@click.option("--no-progress", is_flag=True)
def demo_cmd(out, quick, seed, faces, no_progress):
    """Run the whole pipeline on synthetic clips made from shipped faces: synth, prepare,
    LOSO on the MEGC2019 composite protocol, train a bundle, predict held-out videos."""
    from microfer.demo import run_demo

    r = run_demo(out, quick=quick, seed=seed, faces=faces, echo=click.echo, progress=not no_progress)
    m = r.loso_metrics
    click.echo("")
    click.echo("LOSO (megc2019-composite, synthetic):")
    for name, s in (("model", m["pooled"]), ("majority baseline", m["majority"])):
        click.echo(f"  {name:<18} UF1 {s['uf1']:.3f}  UAR {s['uar']:.3f}  accuracy {s['accuracy']:.3f}")
    click.echo("held-out videos (truth -> predicted with spotted frames / with true frames):")
    for p in r.predictions:
        click.echo(f"  {Path(p['video']).name}: {p['truth']} -> {p['predicted_spotted']} / {p['predicted_given']}"
                   f"   apex true {p['apex_true']}, spotted {p['apex_spotted']}   {p['ms']:.0f} ms")
    click.echo(f"report: {r.report_dir / 'report.md'} (+ confusion.png, per_subject.png)")
    click.echo(f"bundle: {r.bundle}    try: microfer predict {r.predictions[0]['video']} --model {r.bundle}")
    click.echo("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in r.seconds.items()))
