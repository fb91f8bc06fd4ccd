"""The house of occ's modules (issue 25, item 5), read from the source with ``ast`` (nothing is imported):

* the import graph of ``occ`` (every ``import`` at module level and inside functions; ``if TYPE_CHECKING:``
  blocks, which never run, left out) has no cycle, so every import points down a layering, none up;
* the command line (``occ.cli``) is the top: nothing else imports it; ``occ.testing`` is for tests and
  benchmarks: the product does not import it;
* an occ module is imported inside a function only to defer a heavy dependency: the module it imports
  pulls in, at its own module level, one of :data:`HEAVY` that the importing module does not, and the
  import says why in a comment (on its line or the line above). ``occ --help``, ``occ sources`` and scoring
  cached features do not import them (``tests/test_cli.py``, ``tests/test_cli_cached.py``);
* README's Layout section names every module of ``occ/``, and ``pyproject.toml`` installs every package.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "occ"

# Imported at module level, these would make `occ --help`, `occ sources` or a cached `occ attribute`
# import them (each costs from a tenth of a second, PIL, to seconds, torch and transformers) ...
SLOW = frozenset({"torch", "transformers", "onnxruntime", "PIL"})
# ... and these are extras of occ (pyproject.toml's optional-dependencies), not installed by default.
OPTIONAL = frozenset({"ray", "pyarrow", "fastapi", "uvicorn", "c2pa", "cryptography", "matplotlib", "peft"})
HEAVY = SLOW | OPTIONAL


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # an occ module, or the top-level name of another package
    line: int
    local: bool  # inside a function
    comment: bool  # a comment on its line or the line above


def modules() -> dict[str, Path]:
    """Every module of occ by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name if a.name in known or not a.name.startswith("occ") else a.name.rsplit(".", 1)[0]
                for a in node.names]
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    # `from occ import distributed` imports the module occ.distributed; `from occ.x import y` imports occ.x
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]


def imports(name: str, path: Path, known) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []

    def visit(node, local: bool) -> None:
        run_start = None  # first line of the run of import statements the current one belongs to
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for annotations only: never run
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                run_start = child.lineno if run_start is None else run_start
                # a comment on the import, or above the run of imports it is in, says why
                said = any("#" in line for line in lines[run_start - 2 if run_start >= 2 else 0:child.end_lineno])
                if not (isinstance(child, ast.ImportFrom) and child.module == "__future__"):
                    for target in _targets(child, name, path.name == "__init__.py", known):
                        target = target if target in known else target.split(".")[0]
                        if target != name:
                            found.append(Import(name, target, child.lineno, inner, said))
            else:
                run_start = None
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


MODULES = modules()
IMPORTS = [i for name, path in MODULES.items() for i in imports(name, path, MODULES)]


def heavy_at_load(name: str, seen: set | None = None) -> set[str]:
    """The :data:`HEAVY` packages importing module ``name`` imports (its module-level imports, theirs, and
    its parent packages')."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out = set()
    parents = [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]
    for i in IMPORTS:
        if i.importer == name and not i.local:
            out |= heavy_at_load(i.target, seen) if i.target in MODULES else {i.target} & HEAVY
    for parent in parents:
        out |= heavy_at_load(parent, seen)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _packages(name: str) -> list[str]:
    """The packages above module ``name``, outermost first (``occ`` left out: it imports nothing)."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts))]


def occ_edges() -> dict[str, set[str]]:
    """Module -> the occ modules it imports, with the packages above them that importing them runs
    (``from occ.registry.schema import X`` runs ``occ/registry/__init__.py`` first, unless the importer
    lives in that package and it is running already)."""
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.target in MODULES:
            own = set(_packages(i.importer)) | {i.importer}
            edges.setdefault(i.importer, set()).update(
                {i.target} | {p for p in _packages(i.target) if p not in own and p in MODULES})
    return edges


def test_the_graph_is_read_from_the_source() -> None:
    # the reader sees what it must: module-level and local imports, relative and `from occ import module`
    assert {"occ.cli", "occ.registry.store", "occ.backbones"} <= set(MODULES)
    edges = occ_edges()
    assert "occ.registry.schema" in edges["occ.registry"]
    assert "occ.backbones" in edges["occ.heads"]  # through occ.backbones.base: the package runs first
    assert "occ.registry" not in edges["occ.registry.store"]  # its own package
    assert any(i.local and i.target == "torch" for i in IMPORTS)
    assert any(not i.local and i.target == "numpy" for i in IMPORTS)
    assert "torch" in heavy_at_load("occ.verifier") and not heavy_at_load("occ.cli")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert cycles(occ_edges()) == []


def test_the_command_line_is_on_top_and_testing_aside() -> None:
    upward = [i for i in IMPORTS if i.target.startswith("occ.cli") and not i.importer.startswith("occ.cli")]
    assert upward == []
    testing = [i for i in IMPORTS if i.target.startswith("occ.testing") and not i.importer.startswith("occ.testing")]
    assert testing == []


def test_occ_modules_are_imported_in_functions_only_to_defer_a_heavy_dependency() -> None:
    deferred = [i for i in IMPORTS if i.local and i.target in MODULES]
    pointless = [f"{i.importer}:{i.line} -> {i.target}" for i in deferred
                 if not heavy_at_load(i.target) - heavy_at_load(i.importer)]
    assert pointless == [], "import these at module level (or move what they share down a layer)"
    silent = [f"{i.importer}:{i.line} -> {i.target}" for i in deferred if not i.comment]
    assert silent == [], "say why the import is deferred"


def _layout_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
    assert match, "README has no Layout section"
    return match.group(1)


def test_readme_layout_names_every_module() -> None:
    named = set(re.findall(r"`(occ(?:\.\w+)*)", _layout_section()))
    missing = sorted(set(MODULES) - named)
    assert missing == [], f"README's Layout section does not name {missing} (by their dotted names)"


def test_pyproject_installs_every_package() -> None:
    # setuptools' package list is explicit: a package left out of it is missing from a non-editable install
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", pyproject, flags=re.M | re.S).group(1)))
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
