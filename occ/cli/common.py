"""What every command shares: the consoles, the common options, the error handling that turns occ's
errors into one-line messages and exit codes, and the helpers that load the registry and backbone."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Annotated

import typer
from rich.console import Console

from occ.backbones import load_backbone
from occ.errors import ImageError, OccError, UsageError, one_line
from occ.paths import display_path
from occ.registry import Registry
from occ.sources import sources_backbone_spec
from occ.threads import apply

SCORES_HELP = (
    "Scores (0..1) are a monotone map of each source's raw margin, fitted on held-out cross-validation "
    "scores with equal priors, so that they compare across sources; they are not probabilities that the "
    "image comes from the source (on generators and photos unlike the training data they are not "
    "calibrated: check with `occ eval`). How a source decides: a prompt or probe source accepts when its "
    "score reaches its threshold; an lda source (the default) is decided by the registry's joint model and "
    "accepts when its score reaches its threshold, no other source scores higher, and the image lies within "
    "its range (no farther from its centre than 99% of its own held-out images); a row whose score reaches "
    "the threshold but is not accepted says why (nearer to OTHER, outside SOURCE's range). The threshold "
    "(`occ sources` shows the one that decides) obeys two rules chosen at enrollment: at most --far of "
    "held-out non-target images accepted (false accepts), and at most --tpr of held-out target images "
    "accepted (so the threshold stays strict for images unlike any seen); the stricter wins."
)
# Every command group shares these: -h as well as --help; plain help text (no <bool> type column).
TYPER_SETTINGS = dict(context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode=None,
                      add_completion=False, pretty_exceptions_enable=False)

# soft_wrap: a message is one line whatever the terminal width (scripts split stderr by line);
# emoji=False: a file name like "a:cat:.png" is shown as it is.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False, emoji=False)
PIPED_WIDTH = 10_000  # tables on a pipe or in a file: as wide as their content, nothing cut or wrapped

RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", help="Registry folder (default: $OCC_REGISTRY, else a per-user data folder)."),
]
BackboneOpt = Annotated[
    str | None,
    typer.Option("--backbone", help="'embedded' (default, offline CLIP ViT-B/16), a hub id, or a local CLIP "
                 "folder. verify/attribute/eval default to the backbone the sources were enrolled on."),
]
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


def json_option(what: str):
    """The --json flag of a command, saying what that command prints."""
    return typer.Option("--json", help=f"Print {what} on stdout, nothing else (messages stay on stderr).")


def markup_line(text) -> str:
    """``text`` as one line (:func:`occ.errors.one_line`), escaped for rich markup: messages name files, and a
    file may be called "[bold]x.png" (unescaped, rich would eat the brackets or fail on "[/x]")."""
    from rich.markup import escape

    return escape(one_line(text))


def markup_path(path) -> str:
    """A path as every command shows it (:func:`occ.paths.display_path`), escaped for rich markup."""
    from rich.markup import escape

    return escape(display_path(path))


def print_table(title: str, columns, rows, *, header: bool = True) -> None:
    """A results table on stdout. Cells wrap on a terminal and are never cut; on a pipe the table is as
    wide as its content, so names and paths stay whole on one line."""
    from rich.table import Table

    table = Table(title=title, show_header=header)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    show(table)


def show(renderable) -> None:
    """Print a table (or other rich renderable) of results on stdout (see :func:`print_table`). Off a
    terminal, a console as wide as :data:`PIPED_WIDTH` renders it (a console never renders wider than
    itself), so it takes the width of its content."""
    if out.is_terminal:
        out.print(renderable)
    else:
        Console(file=out.file, width=PIPED_WIDTH, highlight=False, emoji=False).print(renderable)


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


def warn(text) -> None:
    """One warning line on stderr."""
    err.print(f"[yellow]warning:[/yellow] {markup_line(text)}", markup=True)


def open_registry(path: str | None):
    return Registry(path)


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


@contextlib.contextmanager
def stage_progress(label: str = "{stage}"):
    """A progress bar (on a terminal) with one line per stage; yields ``on_progress(stage, done, total)``,
    the callback the library's long operations take."""
    with progress_bar() as progress:
        tasks = {}

        def on_progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = progress.add_task(label.format(stage=stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield on_progress


def apply_threads(threads: int | None) -> int:
    """Apply the thread count (``--threads``, else ``OCC_NUM_THREADS``, else a free-core default)."""
    return apply(threads)


def backbone_for(spec: str | None, registry=None, names=None, device: str = "cpu"):
    """Load the backbone, its trunk pass on ``device``: the one named, else the one the registry's sources
    (or those of ``names``) were enrolled on (:func:`occ.sources.sources_backbone_spec`)."""
    if spec is None and registry is not None:
        spec = sources_backbone_spec(registry, names)
    with err.status("loading backbone", spinner="dots") if err.is_terminal else contextlib.nullcontext():
        return load_backbone(spec, device=device, progress=lambda msg: err.print(msg, markup=False))


def report_file_error(exc: ImageError, as_json: bool) -> None:
    """An unreadable input: a JSON line on stdout with per-image --json, else one line on stderr."""
    if as_json:
        print(json.dumps({"path": exc.path, "error": exc.reason}), flush=True)
    else:
        err.print(f"[yellow]skipped[/yellow] {markup_line(exc)}", markup=True)


class InputErrors:
    """The ``on_error`` of a batch: reports each unreadable input (:func:`report_file_error`) and counts them."""

    def __init__(self, as_json: bool):
        self.as_json, self.count = as_json, 0

    def __call__(self, exc: ImageError) -> None:
        self.count += 1
        report_file_error(exc, self.as_json)


def report_left_out(name: str, exc: OccError) -> None:
    """An enrolled source that cannot be used (damaged, another backbone): one line on stderr."""
    err.print(f"[yellow]source '{name}' left out:[/yellow] {markup_line(exc)}", markup=True)


def fmt(x: float) -> str:
    return f"{x:.3f}"
