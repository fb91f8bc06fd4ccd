"""What every command shares: the consoles, the common options, the error handling that turns occ's
errors into one-line messages and exit codes, and the helpers that load the registry and backbone."""

from __future__ import annotations

import functools
import json
from typing import Annotated

import typer
from rich.console import Console

from occ.errors import ImageError, OccError, UsageError

SCORES_HELP = (
    "Scores are calibrated probabilities (0..1) that the image comes from the source, estimated from "
    "held-out cross-validation scores at enrollment with equal priors; they compare across sources. "
    "A verifier accepts when its score reaches its threshold, chosen so that at most --far of held-out "
    "non-target images were accepted."
)

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
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV on stdout (a header, then one row per image, one "
                                      "column per source score), nothing else.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="Threads for torch, onnxruntime and BLAS (default: $OCC_NUM_THREADS, else the "
                 "cores not kept busy by other processes).", show_default=False),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Where the backbone's trunk pass runs: cpu or cuda (torch engine; the int8 "
                 "engine needs onnxruntime's CUDA provider)."),
]

def one_line(text: str) -> str:
    return " ".join(str(text).split())


def markup_line(text) -> str:
    """``text`` as one line, escaped for rich markup: messages name files, and a file may be called
    "[bold]x.png" (unescaped, rich would eat the brackets or fail on "[/x]")."""
    from rich.markup import escape

    return escape(one_line(text))


def markup_path(path) -> str:
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
            err.print(f"[red]error:[/red] {markup_line(exc)}", markup=True)
            raise typer.Exit(2) from None
        except OccError as exc:
            err.print(f"[red]error:[/red] {markup_line(exc)}", markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def open_registry(path: str | None):
    from occ.registry import Registry

    return Registry(path)


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def apply_threads(threads: int | None) -> int:
    """Apply the thread count (``--threads``, else ``OCC_NUM_THREADS``, else a free-core default)."""
    from occ.threads import apply

    return apply(threads)


def backbone_spec_for(spec: str | None, registry=None, names=None) -> str | None:
    """The backbone to load: the one named, else the one the registry's sources (or those of ``names``)
    were enrolled on (None: the default)."""
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
    return spec


def backbone_for(spec: str | None, registry=None, names=None, device: str = "cpu"):
    """Load the backbone of :func:`backbone_spec_for`, its trunk pass on ``device``."""
    from occ.backbones import load_backbone

    spec = backbone_spec_for(spec, registry, names)
    with err.status("loading backbone", spinner="dots") if err.is_terminal else null_context():
        return load_backbone(spec, device=device, progress=lambda msg: err.print(msg, markup=False))


class null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def report_file_error(exc: ImageError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": exc.path, "error": exc.reason}), flush=True)
    else:
        err.print(f"[yellow]skipped[/yellow] {markup_line(exc)}", markup=True)


def fmt(x: float) -> str:
    return f"{x:.3f}"
