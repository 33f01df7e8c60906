"""`microfer pretrain` (MV2 block on macro-expressions) and `microfer loso` (evaluation)."""
from __future__ import annotations

from pathlib import Path

import click

REPRESENTATIONS = ("apex", "onset_apex", "flow")
VARIANTS = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")
GRID_OPTION = click.option("--grid", type=click.Choice(["small", "full"]), default="small", show_default=True,
                           help="feature x SVM grid searched inside each training fold")


@click.command("pretrain")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False),
              help="prepare cache of MACRO-expression clips (settings folder, or its parent holding one)")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False),
              help="manifest CSV the cached clips were prepared from (labels: its emotion column)")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False),
              help="face images ROOT/<split>/<emotion>/*.png (FER-2013 layout); apex representation only")
@click.option("--images-split", default="train", show_default=True, help="split folder of --images to use")
@click.option("--label-column", default="emotion", show_default=True, help="manifest column holding the label")
@click.option("--representation", type=click.Choice(REPRESENTATIONS), default="flow", show_default=True)
@click.option("--variant", type=click.Choice(VARIANTS), default="mobilevit_xxs", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--input-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available)")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="folder for mv2_block.safetensors/.json and the checkpoint")
@click.option("--resume", is_flag=True, help="continue from the checkpoint in --out")
def pretrain_cmd(cache, manifest, images, images_split, label_column, representation, variant, epochs,
                 batch_size, lr, input_size, seed, threads, device, out, resume):
    """Pretrain the MobileNetV2 block of MobileViT on macro-expression samples."""
    from microfer.errors import MicroferError
    from microfer.models.pretrain import (PretrainSettings, combine, load_cache_samples, load_image_folder,
                                          pretrain)

    if cache is None and images is None:
        raise MicroferError("give macro-expression data: --cache (with --manifest) and/or --images")
    if cache is not None and manifest is None:
        raise MicroferError("--cache needs --manifest: the emotion of each macro clip comes from its manifest row")
    if images is not None and representation != "apex":
        raise MicroferError(f"--images holds still faces, which only give the 'apex' representation "
                            f"(got --representation {representation})")
    parts = []
    if cache is not None:
        parts.append(load_cache_samples(cache, manifest, representation, input_size, label_column, progress=True))
    if images is not None:
        parts.append(load_image_folder(images, images_split, input_size, progress=True))
    data = combine(parts)
    click.echo(f"{len(data)} macro samples, {len(data.labels)} labels: "
               + ", ".join(f"{l} {int((data.y == i).sum())}" for i, l in enumerate(data.labels)))
    for reason, count in data.skipped.items():
        click.echo(f"  skipped {count}: {reason}")
    settings = PretrainSettings(variant=variant, representation=representation, input_size=input_size,
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, num_threads=threads,
                                device=device)
    result = pretrain(data, settings, out, resume=resume, progress=True)
    if result.resumed_from:
        click.echo(f"resumed after epoch {result.resumed_from}")
    if result.history:
        last = result.history[-1]
        click.echo(f"epoch {last['epoch']}: loss {last['loss']:.4f}, train accuracy {last['train_accuracy']:.3f}")
    click.echo(f"wrote {result.weights} (+ .json)")


@click.command("loso")
@click.option("--protocol", required=True, help="protocol name (protocols/*.yaml), e.g. megc2019-composite")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="prepare cache (settings folder, or its parent holding exactly one)")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False), multiple=True,
              help="use this manifest instead of the protocol's shipped one (e.g. a synthetic dataset); "
                   "repeat to pool several")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="report folder: results.json, report.md, confusion.png, per_subject.png")
@click.option("--jobs", type=int, default=-1, show_default=True, help="parallel folds (joblib; -1 = all cores)")
@GRID_OPTION
@click.option("--seed", type=int, default=0, show_default=True, help="network initialisation seed")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="pretrained MV2 block (folder from `microfer pretrain`)")
@click.option("--inner-splits", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for feature extraction")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--input-size", type=int, default=128, show_default=True)
@click.option("--feature-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="feature cache (default: <cache settings folder>/features)")
@click.option("--device", default="cpu", show_default=True, help="torch device for feature extraction")
@click.option("--permutations", type=click.IntRange(min=0), default=0, show_default=True,
              help="chance level: rerun the whole nested LOSO N times on permuted labels (within each dataset "
                   "when several are pooled); reports the null UF1/UAR and p-values (N=99 allows p <= 0.01)")
@click.option("--permutation-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="seed of the label permutations")
def loso_cmd(protocol, cache, manifest, out, jobs, grid, seed, weights, inner_splits, threads, batch_size,
             input_size, feature_dir, device, permutations, permutation_seed):
    """Leave-one-subject-out evaluation of PROTOCOL on a prepare cache."""
    from microfer.evaluate import LosoSettings, run_loso

    settings = LosoSettings(grid=grid, seed=seed, n_jobs=jobs, inner_splits=inner_splits, batch_size=batch_size,
                            num_threads=threads, input_size=input_size,
                            block_weights=str(weights) if weights else None,
                            feature_dir=str(feature_dir) if feature_dir else None, device=device,
                            permutations=permutations, permutation_seed=permutation_seed)
    result = run_loso(protocol, cache, manifest=list(manifest) or None, settings=settings, progress=True)
    m = result.metrics
    ex = m["excluded"]
    click.echo(f"{result.protocol}: {len(result.samples)} samples in {m['n_folds']} folds; "
               f"{ex['count']} of {ex['of']} excluded")
    for reason, count in ex["by_reason"].items():
        click.echo(f"  excluded {count}: {reason}")
    shown = [k for k in ("uf1", "uar", "accuracy")]

    def line(name, s):
        return f"{name:<20}" + "  ".join(f"{k.upper()} {s[k]:.4f}" if s[k] is not None else f"{k.upper()} n/a"
                                         for k in shown)

    click.echo(line("model", m["pooled"]))
    click.echo(line("majority baseline", m["majority"]))
    for ds, v in m.get("per_dataset", {}).items():
        click.echo(line(f"  {ds}", v["model"]))
    perm = m.get("permutation")
    if perm:
        within = f"within {', '.join(perm['strata'])}" if perm["strata"] else "across all samples"
        click.echo(f"permutation null (N={perm['n_permutations']}, labels permuted {within}, "
                   f"seed {perm['seed']}):")
        for k, v in perm["metrics"].items():
            click.echo(f"  {k.upper():<4} null mean {v['null_mean']:.4f}  95th percentile {v['null_p95']:.4f}  "
                       f"model {v['real']:.4f}  p {v['p_value']:.4f}")
    extra = f", permutations {result.timings['permutations_s']:.1f} s" if "permutations_s" in result.timings else ""
    click.echo(f"time: {result.timings['total_s']:.1f} s (features {result.timings['features_s']:.1f} s, "
               f"folds {result.timings['folds_s']:.1f} s{extra})")
    if out is not None:
        from microfer.report import write_report

        paths = write_report(result, out)
        click.echo(f"wrote {paths['results']}, {paths['report']}")
