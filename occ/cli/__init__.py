"""The ``occ`` command line: a thin layer over the Python API (:mod:`occ.enrollment`,
:mod:`occ.attribution`, :mod:`occ.registry`). Heavy imports (torch, transformers) happen inside the
commands that need them, so ``occ --help`` and ``occ sources`` start fast.

Exit codes: 0 every input processed; 1 some inputs failed (the rest were processed) or a stored
verifier/backbone could not be used; 2 usage errors (unknown source, empty registry, bad option).
"""

from __future__ import annotations

from typing import Annotated

import typer

from occ import __version__
from occ.cli import backbone, enroll, evaluate, inspect, refit, score, serve, share, sources
from occ.cli.common import SCORES_HELP, TYPER_SETTINGS

app = typer.Typer(
    name="occ",
    help="Which generator made this image? Enroll a source from a few examples, then verify and attribute. "
    + SCORES_HELP,
    no_args_is_help=True,
    **TYPER_SETTINGS,
)


def _version(value: bool) -> None:
    if value:
        print(f"occ {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", help="Print occ's version and exit.",
                                                callback=_version, is_eager=True)] = False) -> None:
    pass
app.command("enroll")(enroll.enroll)
app.command("verify")(score.verify)
app.command("attribute")(score.attribute)
app.command("eval")(evaluate.eval_cmd)
app.command("refit")(refit.refit_cmd)
app.add_typer(sources.sources_app, name="sources")
app.command("export")(share.export_cmd)
app.command("import")(share.import_cmd)
app.command("backbone")(backbone.backbone_cmd)
app.command("inspect")(inspect.inspect_cmd)
app.command("serve")(serve.serve)


def main() -> None:
    app()
