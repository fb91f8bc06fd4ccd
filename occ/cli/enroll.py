"""``occ enroll``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from occ.cli.common import (
    BackboneOpt,
    DeviceOpt,
    RegistryOpt,
    ThreadsOpt,
    apply_threads,
    backbone_for,
    fmt,
    handle_errors,
    markup_path,
    open_registry,
    out,
    progress_bar,
    report_file_error,
)
from occ.errors import UsageError


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
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
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
    reg = open_registry(registry)
    if name in reg and not replace:
        raise UsageError(f"source '{name}' already exists in {reg.root}; use --replace to overwrite it")
    # Record the backbone actually used (OCC_BACKBONE included), a local folder as an absolute path, so
    # that verify/attribute find it again from any folder.
    spec = backbone or default_spec()
    if Path(spec).expanduser().is_dir():
        spec = str(Path(spec).expanduser().resolve())
    n_threads = apply_threads(threads)
    bb = backbone_for(spec, device=device)
    kind = kind or ("text" if bb.has_text else "visual")
    settings = {"seed": seed} if adversarial is None else {"seed": seed, "adversarial": adversarial}
    if steps is not None:
        settings["steps"] = steps
    verifier = Verifier(kind=kind, template=template, settings=TrainSettings(**settings), far=far, target_tpr=tpr)
    errors = []
    with progress_bar() as progress:
        tasks = {}

        def on_progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = do_enroll(reg, name, paths, backbone=bb, verifier=verifier, negatives=negatives or (),
                           use_bank=not no_bank, replace=replace, backbone_spec=spec,
                           on_error=lambda e: (errors.append(e), report_file_error(e, False)),
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
    table.add_row("threshold", f"{fmt(result.verifier.threshold)} (calibrated score): held-out FAR <= {far:g}, "
                  f"TPR <= {tpr:g}")
    table.add_row("held-out (cross-validation)", f"TPR {fmt(cal.tpr)}, FAR {fmt(cal.achieved_far)}, "
                  f"AUC {fmt(cal.auc)} on {len(cal.pos_scores)} target / {len(cal.neg_scores)} non-target")
    table.add_row("time", f"{result.seconds:.1f} s on {n_threads} thread(s), {bb.device}")
    table.add_row("registry", markup_path(reg.root))
    out.print(table)
    if errors:
        raise typer.Exit(1)
