"""``occ enroll``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

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
    print_table,
    report_file_error,
    stage_progress,
    warn,
)
from occ.decisions import WEAK_TPR, for_source, is_weak
from occ.sources import enroll_backbone_spec


@handle_errors
def enroll(
    name: Annotated[str, typer.Argument(help="Name of the source (letters, digits, '.', '_', '-').")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders of that source (~5-50 images).")],
    negatives: Annotated[list[Path] | None, typer.Option("--negatives", help="Folder of extra non-target images "
                                                          "(repeatable).")] = None,
    far: Annotated[float, typer.Option("--far", help="Threshold rule 1: accept at most this share of held-out "
                                       "non-target images (the false-accept rate).")] = 0.05,
    tpr: Annotated[float, typer.Option("--tpr", help="Threshold rule 2: accept at most this share of held-out "
                                       "target images, which keeps the threshold strict for images unlike any "
                                       "seen. The stricter rule wins.")] = 0.90,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same images + seed = same verifier).")] = 0,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing source of that name.")] = False,
    method: Annotated[str | None, typer.Option(
        "--method", help="'lda' (default: a shared-covariance discriminant on the CLS tokens of blocks 4-10, "
        "decided jointly with every other enrolled lda source), 'prompt' (OCC-CLIP prompt tokens) or 'probe' "
        "(USIA: logistic probe on one block's CLS token). lda and probe are fitted in closed form: --loss, "
        "--sam, --adversarial and --steps do not apply.")]
    = None,
    views: Annotated[int | None, typer.Option("--views", help="lda: laundered copies (re-encoded, resized, blurred, "
                                              "cropped) of each training image added to the training set "
                                              "(default 2; 0 for none).")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Prompt training loss: 'ce' (OCC-CLIP, default) or "
                                             "'cvar-auc' (Santosh et al.: CVaR at alpha 0.8 + AUC loss).")] = None,
    sam: Annotated[bool, typer.Option("--sam", help="Sharpness-aware minimisation around AdamW (rho 0.05).")] = False,
    kind: Annotated[str | None, typer.Option("--kind", help="Prompt kind: 'visual' (image-only towers) or 'text' "
                                               "(OCC-CLIP with a text tower). Default: the --template's kind, "
                                               "else text when the backbone has a text tower, else visual.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template name or JSON file (stored "
                                                   "whole with the source).")] = None,
    adversarial: Annotated[str | None, typer.Option(
        "--adversarial", help="Adversarial augmentation of negatives: none (default: on the devset neither "
        "variant beat it), feature (FGSM on the features the verifier reads) or pixel (OCC-CLIP's FGSM "
        "on the pixels; slow on a CPU).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps per model (default 60).")] = None,
    no_bank: Annotated[bool, typer.Option("--no-default-negatives", help="Do not use the shipped bank of real "
                                          "photos as negatives.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Enroll from fewer than 5 distinct readable images (at "
                                        "least 2), which is refused without it: such a verifier is unreliable.")]
    = False,
    allow_overlap: Annotated[bool, typer.Option("--allow-overlap", help="Enroll training images that are also "
                                                "training images of another source (same file contents), which "
                                                "is refused without it: each is then a target of one source and "
                                                "a non-target of the other.")] = False,
    registry: RegistryOpt = None,
    backbone: BackboneOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Learn a verifier for source NAME from example images and store it in the registry.

    Refused before anything is fitted or written (exit 2): fewer than 5 distinct readable images (unless
    --force), or training images that are training images of another source (unless --allow-overlap). A
    source that accepts less than half of its own held-out images at its threshold is stored with a
    warning and marked weak in `occ sources`.
    """
    # deferred: loads PIL and torch, which occ --help, occ sources and cached scoring never import
    from occ.config import VerifierConfig
    from occ.enrollment import enroll as do_enroll
    from occ.verifier import Verifier

    reg = open_registry(registry)
    reg.check_new(name, replace=replace)
    spec = enroll_backbone_spec(backbone)
    n_threads = apply_threads(threads)
    load = functools.cache(lambda: backbone_for(spec, device=device))
    # Every option maps onto one field of the config (and is checked) before the backbone is loaded,
    # unless the default kind depends on the backbone.
    config = VerifierConfig.from_options(method=method, kind=kind, template=template, backbone=load, far=far,
                                         target_tpr=tpr, views=views, seed=seed, loss=loss, sam=sam or None,
                                         adversarial=adversarial, steps=steps)
    bb = load()
    errors = []
    with stage_progress() as on_progress:
        result = do_enroll(reg, name, paths, backbone=bb, verifier=Verifier(config), negatives=negatives or (),
                           use_bank=not no_bank, replace=replace, backbone_spec=spec,
                           on_error=lambda e: (errors.append(e), report_file_error(e, False)),
                           progress=on_progress, force=force, allow_overlap=allow_overlap)
    # Everything below is read back from the stored verifier and what decides it, not from the options.
    stored = result.verifier
    decides = for_source(reg, name)
    cal = decides.calibration
    rows = [
        ("target images used", str(result.n_target) + (f" ({len(errors)} unreadable)" if errors else "")),
        ("non-target images", ", ".join(f"{k}: {v}" for k, v in result.negatives.items())),
        ("verifier", stored.describe()),
        ("threshold", "unknown: the joint model is not stored (run `occ refit`)" if cal is None else
         f"{fmt(cal.calibrated_threshold)} (score; decided by {decides.describe()}): held-out FAR <= {cal.far:g}, "
         f"TPR <= {cal.target_tpr:g}"),
        ("time", f"{result.seconds:.1f} s on {n_threads} thread(s), {bb.device}"),
        ("registry", markup_path(reg.root)),
    ]
    if cal is not None:
        rows.insert(4, ("held-out (cross-validation)", f"TPR {fmt(cal.tpr)}, FAR {fmt(cal.achieved_far)}, AUC "
                                                       f"{fmt(cal.auc)} on {len(cal.pos_scores)} target / "
                                                       f"{len(cal.neg_scores)} non-target rows"))
    if stored.evidence_:
        rows.insert(3, ("training views", f"{len(stored.evidence_['evidence.ids'])} rows from {result.n_target} "
                                          f"images ({stored.config.views} laundered cop"
                                          f"{'y' if stored.config.views == 1 else 'ies'} each); decided jointly with "
                                          "the registry's other lda sources"))
    print_table(f"enrolled '{name}'", ("field", "value"), rows, header=False)
    for text in enrollment_warnings(result, cal):
        warn(text)
    if errors:
        raise typer.Exit(1)


def enrollment_warnings(result, cal) -> list[str]:
    """What a user must know about an enrollment before trusting it, read from what was fitted (``cal``:
    the calibration that decides the source, None when unknown)."""
    # deferred: loads PIL and torch, which occ --help, occ sources and cached scoring never import
    from occ.enrollment import MIN_HELDOUT, MIN_SHOTS

    out = []
    if cal is not None and is_weak(cal):
        out.append(f"source '{result.record.name}' is weak: it accepts {fmt(cal.tpr)} of its own held-out images at "
                   f"its threshold, below {WEAK_TPR:g}; stored, and marked weak in `occ sources` (enroll more, or "
                   "more typical, images)")
    if result.n_target < MIN_SHOTS:
        out.append(f"only {result.n_target} target images: below {MIN_SHOTS}, a verifier is unreliable; enroll more")
    if result.n_target < MIN_HELDOUT:
        out.append(f"the held-out figures rest on {result.n_target} target images: too few to mean much "
                   f"(the threshold's TPR and FAR are rough below {MIN_HELDOUT})")
    for other, n in result.overlaps.items():
        out.append(f"{n} of these training images are also training images of source '{other}'")
    return out
