"""The ``occ`` command line: a thin layer over the Python API (:mod:`occ.enrollment`,
:mod:`occ.attribution`, :mod:`occ.registry`). Heavy imports (torch, transformers) happen inside the
commands that need them, so ``occ --help`` and ``occ sources`` start fast.

Exit codes: 0 every input processed; 1 some inputs failed (the rest were processed) or a stored
verifier/backbone could not be used; 2 usage errors (unknown source, empty registry, bad option).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from occ.errors import ImageError, OccError, UsageError

SCORES_HELP = (
    "Scores are calibrated probabilities (0..1) that the image comes from the source, estimated from "
    "held-out cross-validation scores at enrollment with equal priors; they compare across sources. "
    "A verifier accepts when its score reaches its threshold, chosen so that at most --far of held-out "
    "non-target images were accepted."
)

app = typer.Typer(
    name="occ",
    help="Which generator made this image? Enroll a source from a few examples, then verify and attribute. "
    + SCORES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sources_app = typer.Typer(help="List, show and remove enrolled sources.", no_args_is_help=False)
app.add_typer(sources_app, name="sources")

# soft_wrap: a message is one line whatever the terminal width (scripts split stderr by line);
# emoji=False: a file name like "a:cat:.png" is shown as it is.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False, emoji=False)

RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", help="Registry folder (default: $OCC_REGISTRY, else a per-user data folder)."),
]
BackboneOpt = Annotated[
    str | None,
    typer.Option("--backbone", help="'embedded' (default, offline CLIP ViT-B/16), a hub id, or a local CLIP "
                 "folder. verify/attribute default to the backbone the sources were enrolled on."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, nothing else.")]


def main() -> None:
    app()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _line(text) -> str:
    """``text`` as one line, escaped for rich markup: messages name files, and a file may be called
    "[bold]x.png" (unescaped, rich would eat the brackets or fail on "[/x]")."""
    from rich.markup import escape

    return escape(_one_line(text))


def _shown(path) -> str:
    """A path for a table cell: printable (undecodable bytes as \\xNN) and escaped for rich markup."""
    from rich.markup import escape

    text = str(path)
    if not text.isprintable():
        from occ.images import display_path  # (numpy, Pillow: not for `occ sources`)

        text = display_path(text)
    return escape(text)


def handle_errors(func):
    """Turn occ's errors into one-line messages and the documented exit codes."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            err.print(f"[red]error:[/red] {_line(exc)}", markup=True)
            raise typer.Exit(2) from None
        except OccError as exc:
            err.print(f"[red]error:[/red] {_line(exc)}", markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _registry(path: str | None):
    from occ.registry import Registry

    return Registry(path)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def _backbone(spec: str | None, registry=None, names=None):
    """Load the backbone: the one named, else the one the registry's sources (or those of ``names``)
    were enrolled on."""
    from occ.backbones import load_backbone

    if spec is None and registry is not None:
        from occ.errors import RegistryError

        specs, problems = set(), []
        names = registry.names() if names is None else list(names)
        for name in names:
            try:
                specs.add((registry.info(name).meta.get("backbone") or {}).get("spec"))
            except OccError as exc:
                problems.append(exc)
        specs.discard(None)
        if len(specs) > 1:
            raise UsageError(f"sources were enrolled on different backbones ({', '.join(sorted(specs))}); "
                             "choose one with --backbone")
        if names and len(problems) == len(names):
            # No source can be read, so none says which backbone it needs: report the damage instead of
            # loading (perhaps fetching) the default backbone for nothing.
            more = f" ({len(problems) - 1} more source(s) cannot be read either)" if len(problems) > 1 else ""
            raise RegistryError(f"{problems[0]}{more}")
        spec = specs.pop() if specs else None
    with err.status("loading backbone", spinner="dots") if err.is_terminal else _null():
        return load_backbone(spec, progress=lambda msg: err.print(msg, markup=False))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _report_file_error(exc: ImageError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": exc.path, "error": exc.reason}), flush=True)
    else:
        err.print(f"[yellow]skipped[/yellow] {_line(exc)}", markup=True)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


# -- enroll ----------------------------------------------------------------------------------------


@app.command()
@handle_errors
def enroll(
    name: Annotated[str, typer.Argument(help="Name of the source (letters, digits, '.', '_', '-').")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders of that source (~5-50 images).")],
    negatives: Annotated[list[Path] | None, typer.Option("--negatives", help="Folder of extra non-target images "
                                                          "(repeatable).")] = None,
    far: Annotated[float, typer.Option("--far", help="Highest false-accept rate allowed on held-out non-target "
                                       "images.")] = 0.05,
    tpr: Annotated[float, typer.Option("--tpr", help="Accept at most this share of held-out target images: keeps "
                                       "the threshold strict for images unlike anything seen.")] = 0.90,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same images + seed = same verifier).")] = 0,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing source of that name.")] = False,
    method: Annotated[str, typer.Option("--method", help="'prompt' (OCC-CLIP prompt tokens, default) or 'probe' "
                                        "(USIA: logistic probe on an intermediate block's CLS token).")] = "prompt",
    loss: Annotated[str, typer.Option("--loss", help="Prompt training loss: 'ce' (OCC-CLIP) or 'cvar-auc' "
                                      "(Santosh et al.: CVaR at alpha 0.8 + AUC loss).")] = "ce",
    sam: Annotated[bool, typer.Option("--sam", help="Sharpness-aware minimisation around AdamW (rho 0.05).")] = False,
    kind: Annotated[str | None, typer.Option("--kind", help="Prompt kind: 'visual' (image-only towers) or 'text' "
                                               "(OCC-CLIP with a text tower). Default: text when the backbone "
                                               "has a text tower, else visual.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template name or JSON file.")] = None,
    adversarial: Annotated[str | None, typer.Option(
        "--adversarial", help="Adversarial augmentation of negatives: none (default: on the devset neither "
        "variant beat it), feature (FGSM on the features the verifier reads) or pixel (OCC-CLIP's FGSM "
        "on the pixels; slow on a CPU).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps per model.")] = None,
    no_bank: Annotated[bool, typer.Option("--no-default-negatives", help="Do not use the shipped bank of real "
                                          "photos as negatives.")] = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
) -> None:
    """Learn a verifier for source NAME from example images and store it in the registry."""
    from occ.backbones import default_spec
    from occ.calibration import check_far, check_tpr
    from occ.enrollment import enroll as do_enroll
    from occ.registry import validate_name
    from occ.training import TrainSettings
    from occ.verifier import Verifier

    validate_name(name)
    check_far(far)
    check_tpr(tpr)
    reg = _registry(registry)
    if name in reg and not replace:
        raise UsageError(f"source '{name}' already exists in {reg.root}; use --replace to overwrite it")
    # Record the backbone actually used (OCC_BACKBONE included), a local folder as an absolute path, so
    # that verify/attribute find it again from any folder.
    spec = backbone or default_spec()
    if Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())
    bb = _backbone(spec)
    kind = kind or ("text" if bb.has_text else "visual")
    settings = {"seed": seed} if adversarial is None else {"seed": seed, "adversarial": adversarial}
    if steps is not None:
        settings["steps"] = steps
    verifier = Verifier(kind=kind, template=template, settings=TrainSettings(**settings), far=far, target_tpr=tpr)
    errors = []
    with _progress() as progress:
        tasks = {}

        def on_progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = do_enroll(reg, name, paths, backbone=bb, verifier=verifier, negatives=negatives or (),
                           use_bank=not no_bank, replace=replace, backbone_spec=spec,
                           on_error=lambda e: (errors.append(e), _report_file_error(e, False)),
                           progress=on_progress)
    cal = result.verifier.calibration_
    table = Table(title=f"enrolled '{name}'", show_header=False)
    table.add_row("target images used", str(result.n_target) + (f" ({len(errors)} unreadable)" if errors else ""))
    table.add_row("non-target images", ", ".join(f"{k}: {v}" for k, v in result.negatives.items()))
    if kind == "probe":
        described = f"logistic probe on the CLS token of block {int(result.verifier.head_.block)}, seed {seed}"
    else:
        adv = result.verifier.settings.adversarial
        described = (f"{kind} prompts, template {result.verifier.template_.name}, adversarial {adv}, "
                     f"loss {loss}{' + SAM' if sam else ''}, seed {seed}")
    table.add_row("verifier", described)
    table.add_row("threshold", f"{_fmt(result.verifier.threshold)} (calibrated score): held-out FAR <= {far:g}, "
                  f"TPR <= {tpr:g}")
    table.add_row("held-out (cross-validation)", f"TPR {_fmt(cal.tpr)}, FAR {_fmt(cal.achieved_far)}, "
                  f"AUC {_fmt(cal.auc)} on {len(cal.pos_scores)} target / {len(cal.neg_scores)} non-target")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("registry", _shown(reg.root))
    out.print(table)
    if errors:
        raise typer.Exit(1)


# -- verify / attribute ----------------------------------------------------------------------------


@app.command()
@handle_errors
def verify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    source: Annotated[str, typer.Option("--source", help="The enrolled source to verify against.")],
    as_json: JsonOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
) -> None:
    """Score images against one source: calibrated score, threshold, accept/reject.

    Scores are calibrated probabilities (0..1) that the image comes from the source; the threshold
    keeps held-out false accepts at the source's --far.
    """
    from occ.attribution import Attributor

    reg = _registry(registry)
    if source not in reg:
        raise UsageError(f"no source named '{source}' in registry {reg.root} (enrolled: "
                         f"{', '.join(reg.names()) or 'none'})")
    reg.info(source)  # a damaged verifier.json is reported before any backbone is loaded
    bb = _backbone(backbone, reg, [source])
    attributor = Attributor.from_registry(reg, bb, [source])
    failures = 0
    rows = []

    def on_error(exc):
        nonlocal failures
        failures += 1
        _report_file_error(exc, as_json)

    for d in attributor.run(paths, on_error):
        score, threshold = d.scores[source], d.thresholds[source]
        accepted = source in d.accepted
        if as_json:
            print(json.dumps({"path": d.path, "source": source, "score": round(score, 6),
                              "threshold": round(threshold, 6), "accepted": accepted}), flush=True)
        else:
            rows.append((_shown(d.path), _fmt(score), _fmt(threshold), "[green]yes[/green]" if accepted else "no"))
    if not as_json and rows:
        table = Table(title=f"verify against '{source}'")
        for col in ("image", "score", "threshold", "accepted"):
            table.add_column(col, overflow="fold" if col == "image" else "ellipsis")  # never cut a file name
        for row in rows:
            table.add_row(*row)
        out.print(table)
    raise typer.Exit(1 if failures else 0)


@app.command()
@handle_errors
def attribute(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    as_json: JsonOpt = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
) -> None:
    """Name the source of each image among all enrolled sources, or 'unknown' when none accepts.

    Every enrolled verifier scores the image; among those that accept, the highest calibrated score
    wins. Scores are calibrated probabilities (0..1), comparable across sources.
    """
    from occ.attribution import Attributor

    reg = _registry(registry)
    if len(reg) == 0:  # before loading (perhaps fetching) a backbone
        raise UsageError(f"registry {reg.root} is empty: enroll a source first with `occ enroll`")
    bb = _backbone(backbone, reg)
    skipped = []

    def on_skip(name, exc):
        skipped.append(name)
        err.print(f"[yellow]source '{name}' left out:[/yellow] {_line(exc)}", markup=True)

    attributor = Attributor.from_registry(reg, bb, on_skip=on_skip)
    failures = 0
    rows = []

    def on_error(exc):
        nonlocal failures
        failures += 1
        _report_file_error(exc, as_json)

    for d in attributor.run(paths, on_error):
        if as_json:
            print(json.dumps({"path": d.path, "source": d.source,
                              "scores": {k: round(v, 6) for k, v in d.scores.items()},
                              "accepted": d.accepted}), flush=True)
        else:
            best = max(d.scores.items(), key=lambda kv: kv[1])
            rows.append((_shown(d.path), d.source or "[dim]unknown[/dim]", f"{best[0]} {_fmt(best[1])}",
                         ", ".join(d.accepted) or "-"))
    if not as_json and rows:
        table = Table(title=f"attribution over {len(attributor.verifiers)} source(s)")
        for col in ("image", "source", "best score", "accepted by"):
            table.add_column(col, overflow="fold" if col == "image" else "ellipsis")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    raise typer.Exit(1 if failures or skipped else 0)


@app.command("eval")
@handle_errors
def eval_cmd(
    root: Annotated[Path, typer.Argument(help="Folder with one subfolder per label: a subfolder named like an "
                                         "enrolled source holds its images; any other (e.g. real) holds images "
                                         "that must be rejected.")],
    perturb: Annotated[str | None, typer.Option("--perturb", help="Also evaluate on perturbed copies, each item on "
                                                "its own: e.g. jpeg:75,resize:0.5,blur:1.5,crop:0.9")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Write report.json, report.md, ROC and "
                                                    "confusion PNGs and scores.csv into this folder (needs "
                                                    "matplotlib, the 'plots' extra of occ).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout, "
                                          "nothing else.")] = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
) -> None:
    """Evaluate the enrolled sources on labelled images: per-source ROC AUC (95% bootstrap CI), TPR and
    false-accept rate at the stored threshold; open-set accuracy, rejection of unknowns, AUROC, OSCR and
    confusion matrix; optionally under perturbations. Figures resting on fewer than 20 positives or 50
    negatives are flagged as rough.
    """
    from rich.markup import escape

    from occ import evaluation
    from occ.perturb import parse_perturb_spec

    perturbations = parse_perturb_spec(perturb) if perturb is not None else []
    if report_dir is not None:
        evaluation.require_matplotlib()
        evaluation.check_report_dir(report_dir)
    evaluation.label_folders(root)
    reg = _registry(registry)
    if len(reg) == 0:
        raise UsageError(f"registry {reg.root} is empty: enroll a source first with `occ enroll`")
    bb = _backbone(backbone, reg)
    failures, skipped = [], []

    def on_error(exc):
        failures.append(exc)
        err.print(f"[yellow]skipped[/yellow] {escape(_one_line(exc))}", markup=True, soft_wrap=True)

    def on_skip(name, exc):
        skipped.append(name)
        err.print(f"[yellow]source '{name}' left out:[/yellow] {escape(_one_line(exc))}", markup=True, soft_wrap=True)

    with _progress() as progress:
        tasks = {}

        def on_progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"evaluating ({stage})", total=total)
            progress.update(tasks[stage], completed=done, total=total)

        report = evaluation.evaluate(reg, bb, root, perturbations, on_error=on_error, on_skip=on_skip,
                                     progress=on_progress, keep_scores=report_dir is not None)
    if report_dir is not None:
        with err.status("writing report", spinner="dots") if err.is_terminal else _null():
            evaluation.write_report(report, report_dir)
    if as_json:
        print(json.dumps(evaluation.public(report), allow_nan=False), flush=True)
        for warning in report["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {escape(_one_line(warning))}", markup=True, soft_wrap=True)
    else:
        for table in evaluation.tables(report):
            out.print(table)
        for warning in report["warnings"]:
            out.print(f"[yellow]warning:[/yellow] {escape(_one_line(warning))}", markup=True, soft_wrap=True)
        if report_dir is not None:
            out.print(f"report written to {escape(str(report_dir / 'report.md'))}", markup=True, soft_wrap=True)
    raise typer.Exit(1 if failures or skipped else 0)


# -- sources ---------------------------------------------------------------------------------------


@sources_app.callback(invoke_without_command=True)
@handle_errors
def sources(ctx: typer.Context, registry: RegistryOpt = None) -> None:
    """Table of enrolled sources."""
    if ctx.invoked_subcommand is not None:
        return
    reg = _registry(registry)
    names = reg.names()
    if not names:
        err.print(f"no sources enrolled in {reg.root}", markup=False)
        return
    table = Table(title=f"sources in {_shown(reg.root)}")
    for col in ("name", "kind", "images", "threshold", "held-out TPR", "held-out FAR", "backbone", "created"):
        table.add_column(col)
    broken = []
    for name in names:
        try:
            meta = reg.info(name).meta
        except OccError as exc:
            broken.append(exc)  # the reason goes to stderr on one line: a table cell would cut it up
            table.add_row(name, "[red]unusable[/red]", "", "", "", "", "", "")
            continue
        cal = _calibration(meta)
        table.add_row(name, meta.get("kind", "?"), str(meta.get("n_target", "?")),
                      _fmt(cal.calibrated_threshold), _fmt(cal.tpr), _fmt(cal.achieved_far),
                      (meta.get("backbone") or {}).get("spec") or "?", str(meta.get("created", "?")))
    out.print(table)
    for exc in broken:
        err.print(f"[red]unusable:[/red] {_line(exc)}", markup=True)
    if broken:
        raise typer.Exit(1)


def _calibration(meta):
    from occ.calibration import Calibration

    return Calibration.from_dict(meta["calibration"])


@sources_app.command("show")
@handle_errors
def sources_show(name: str, registry: RegistryOpt = None) -> None:
    """Everything stored about one source (settings, calibration, provenance)."""
    reg = _registry(registry)
    meta = reg.info(name).meta
    cal = _calibration(meta)
    summary = {k: v for k, v in meta.items() if k not in ("calibration", "training_images", "checksum", "files")}
    summary["calibration"] = {"far": cal.far, "target_tpr": cal.target_tpr,
                              "threshold_calibrated": cal.calibrated_threshold, "threshold_raw": cal.threshold,
                              "heldout_tpr": cal.tpr,
                              "heldout_far": cal.achieved_far, "heldout_auc": cal.auc,
                              "heldout_target": len(cal.pos_scores), "heldout_nontarget": len(cal.neg_scores)}
    summary["training_images_sha256"] = meta.get("training_images", [])
    out.print_json(json.dumps(summary))


@sources_app.command("remove")
@handle_errors
def sources_remove(name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
                   registry: RegistryOpt = None) -> None:
    """Remove an enrolled source (asks first unless --yes)."""
    reg = _registry(registry)
    reg.info(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to remove '{name}' without --yes (no terminal to ask)")
        typer.confirm(f"remove source '{name}' from {reg.root}?", abort=True)
    reg.remove(name)
    err.print(f"removed '{name}'")


@sources_app.command("set-threshold")
@handle_errors
def sources_set_threshold(
    name: str,
    far: Annotated[float | None, typer.Option("--far", help="New highest held-out false-accept rate.")] = None,
    tpr: Annotated[float | None, typer.Option("--tpr", help="New share of held-out target images to accept.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Re-choose a source's threshold from its stored held-out scores (no retraining)."""
    if far is None and tpr is None:
        raise UsageError("give --far and/or --tpr")
    reg = _registry(registry)
    tensors, meta = reg.load(name)
    cal = _calibration(meta).with_far(far, tpr)
    meta["calibration"] = cal.to_dict()
    reg.save(name, tensors, meta, replace=True)
    err.print(f"'{name}': threshold {_fmt(cal.calibrated_threshold)} (FAR <= {cal.far:g}, TPR <= {cal.target_tpr:g}): "
              f"held-out TPR {_fmt(cal.tpr)}, FAR {_fmt(cal.achieved_far)}")


# -- export / import -------------------------------------------------------------------------------


@app.command("export")
@handle_errors
def export_cmd(name: str, file: Path,
               replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing file.")] = False,
               registry: RegistryOpt = None) -> None:
    """Write one source to a single file that `occ import` checks before it writes anything."""
    path = _registry(registry).export(name, file, replace=replace)
    err.print(f"exported '{name}' to {path}", markup=False)


@app.command("import")
@handle_errors
def import_cmd(
    file: Path,
    as_name: Annotated[str | None, typer.Option("--as", help="Store under another name.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing source of that name.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Add a source from a file made by `occ export` (validated first; a bad file writes nothing)."""
    record = _registry(registry).import_file(file, as_name=as_name, replace=replace)
    err.print(f"imported '{record.name}'")


# -- backbone --------------------------------------------------------------------------------------


@app.command("backbone")
@handle_errors
def backbone_cmd(backbone: BackboneOpt = None, registry: RegistryOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Show the backbone in use: model, weights location, fingerprint, text tower, cache and registry."""
    from occ.paths import cache_dir, registry_dir

    bb = _backbone(backbone)
    info = bb.describe()
    info["cache"] = str(cache_dir())
    info["registry"] = str(registry_dir(registry))
    if as_json:
        print(json.dumps(info))
        return
    table = Table(title="backbone", show_header=False)
    for key, value in info.items():
        table.add_row(key, str(value))
    out.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
