"""README's command options against the commands themselves (read from the command tree typer builds, nothing run):

* every ``--option`` that README's code (inline spans and code blocks) writes after ``occ COMMAND``, or after
  a span that starts with a command's name (``sources show NAME``, ``eval --json``), is an option of that
  command;
* a sentence that lists which commands take an option (``enroll, verify ... and serve take `--threads N```)
  names exactly the commands that have it;
* the Commands table's row for a command names every option it has, but ``--help`` and the options such a
  sentence covers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from occ.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
ROOT = typer.main.get_command(app)
OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def command_options() -> dict[tuple[str, ...], set[str]]:
    """Every command and group by its path of names (``()`` for ``occ`` itself) -> its long options."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(command, path: tuple[str, ...]) -> None:
        out[path] = {o for p in command.params if p.param_type_name == "option" for o in p.opts + p.secondary_opts
                     if o.startswith("--")} | {"--help"}
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(ROOT, ())
    return out


COMMANDS = command_options()


def command_at(words: list[str]) -> tuple[tuple[str, ...], int]:
    """The longest command path ``words`` start with, and how many words it took."""
    path: tuple[str, ...] = ()
    for word in words:
        if (*path, word) not in COMMANDS:
            break
        path = (*path, word)
    return path, len(path)


def snippets() -> list[str]:
    """README's code: each inline span, and each line of a fenced block without its ``#`` comment."""
    text = README
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        out += [line.split(" #")[0] for line in block.splitlines()]
    text = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    out += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]
    return out


def attributions() -> list[tuple[tuple[str, ...], str, str]]:
    """(command path, option, snippet) for every option README's code writes after a command."""
    found = []
    for snippet in snippets():
        words = snippet.replace("\\|", "|").split()
        starts = [i + 1 for i, w in enumerate(words) if w == "occ"]
        if words and (words[0],) in COMMANDS:
            starts.insert(0, 0)
        for k, start in enumerate(starts):
            path, taken = command_at(words[start:])
            end = starts[k + 1] - 1 if k + 1 < len(starts) else len(words)
            for word in words[start + taken:end]:
                found += [(path, opt, snippet) for opt in OPTION.findall(word)]
    return found


def test_the_readers_see_the_readme() -> None:
    # the command tree and the README are read as they must be (a reader that finds nothing checks nothing)
    assert "--perturb" in COMMANDS[("eval",)] and "--yes" in COMMANDS[("sources", "remove")]
    assert "--version" in COMMANDS[()]
    assert command_at(["sources", "set-threshold", "NAME"]) == (("sources", "set-threshold"), 2)
    found = attributions()
    assert any(p == ("enroll",) and o == "--allow-overlap" for p, o, _ in found)
    assert any(p == ("sources", "remove") and o == "--yes" for p, o, _ in found)
    assert any(p == ("eval",) and o == "--perturb" for p, o, _ in found)
    assert {o for o, _ in list_sentences()} >= {"--threads", "--device", "--backbone"}
    assert [o for o, _ in but_sentences()] == ["--registry"]


def test_every_option_the_readme_gives_a_command_is_one_of_its_options() -> None:
    wrong = sorted({f"occ {' '.join(path)} {opt} (in `{snippet}`)" for path, opt, snippet in attributions()
                    if opt not in COMMANDS[path]})
    assert wrong == [], "README gives commands options they do not have"


def list_sentences() -> list[tuple[str, set[str]]]:
    """(option, the commands named) for each sentence "A, B and C (also) take `--option ...`"."""
    text = " ".join(README.split())
    names = r"`?[a-z][a-z-]*`?"
    out = []
    for match in re.finditer(rf"((?:{names}, )*{names} and {names}) (?:also )?take `(--[a-z][a-z0-9-]*)", text):
        out.append((match.group(2), {w.strip("`") for w in re.split(r", | and ", match.group(1))}))
    return out


@pytest.mark.parametrize("option, named", list_sentences(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_list_of_the_commands_that_take_an_option_is_complete_and_right(option, named) -> None:
    having = {path[0] for path in COMMANDS if len(path) == 1 and option in COMMANDS[path]}
    assert named == having, f"README says {sorted(named)} take {option}; they are {sorted(having)}"


def but_sentences() -> list[tuple[str, str]]:
    """(option, the command left out) for each sentence "Every command but `X` ... takes `--option ...`"."""
    text = " ".join(README.split())
    return [(m.group(2), m.group(1))
            for m in re.finditer(r"Every command but `([a-z][a-z-]*)`[^.]*? takes `(--[a-z][a-z0-9-]*)", text)]


@pytest.mark.parametrize("option, left_out", but_sentences())
def test_every_command_but_one_takes_an_option(option, left_out) -> None:
    lacking = sorted(" ".join(path) for path in COMMANDS if path and option not in COMMANDS[path])
    assert lacking == [left_out], f"README says every command but {left_out} takes {option}; these lack it"


def table_rows() -> dict[tuple[str, ...], str]:
    """The first cell of the Commands table, by each command its spans start with."""
    section = re.search(r"^## Commands\n(.*?)(?=^## )", README, flags=re.S | re.M).group(1)
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1]
        for span in re.findall(r"`([^`]+)`", cell):
            words = span.replace("\\|", "|").split()
            words = words[1:] if words[0] == "occ" else words
            path, _ = command_at(words)
            if path:
                rows[path] = rows.get(path, "") + " " + span
    return rows


def test_the_commands_table_names_every_option_of_each_command() -> None:
    rows = table_rows()
    covered = {}
    for option, named in list_sentences():
        for name in named:
            covered.setdefault((name,), set()).add(option)
    for option, left_out in but_sentences():
        for path in COMMANDS:
            if path and path[0] != left_out:
                covered.setdefault(path, set()).add(option)
    assert {p for p in COMMANDS if p} - set(rows) == set(), "a command missing from the Commands table"
    missing = sorted(f"occ {' '.join(path)} {opt}" for path, row in rows.items()
                     for opt in COMMANDS[path] - set(OPTION.findall(row)) - covered.get(path, set())
                     - covered.get(path[:1], set()) - {"--help"})
    assert missing == [], "the Commands table leaves out these options"
