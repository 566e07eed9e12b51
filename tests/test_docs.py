"""The docs build: every page's Python examples run as written, every relative link and anchor resolves,
and every command line shown parses (``interfero ...`` against the real argument parser, ``python
scripts/X.py ...`` against the script's own options)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "data" / "README.md"]


def _blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_run(page, capsys):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        scope: dict = {}
        for code in _blocks(page, "python"):  # one page's blocks share a namespace, as in a session
            exec(compile(code, str(page.relative_to(ROOT)), "exec"), scope)
    finally:
        os.chdir(cwd)


def test_conventions_worked_example_prints_its_numbers(capsys):
    test_python_examples_run(ROOT / "docs" / "conventions.md", capsys)
    out = capsys.readouterr().out
    assert "64 160.0 2.0" in out and "ALMA" in out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            heads = {_anchor(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            assert anchor in heads, f"{page.name}: no heading for #{anchor} in {dest.name}"


def _command_lines(page: Path) -> list[list[str]]:
    lines = []
    for block in _blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("interfero ", "python scripts/", "python benchmarks/")):
                lines.append(shlex.split(line.split("|")[0].split(">")[0]))
    return lines


@pytest.mark.parametrize("page", [p for p in PAGES if _command_lines(p)], ids=lambda p: p.name)
def test_command_lines_parse(page):
    from posterior.cli import build_parser

    parser = build_parser()
    for argv in _command_lines(page):
        if argv[0] == "interfero":
            try:
                parser.parse_args(argv[1:])
            except SystemExit as stop:
                raise AssertionError(f"{page.name}: `{' '.join(argv)}` does not parse") from stop
        else:
            script = ROOT / argv[1]
            assert script.is_file(), f"{page.name}: no script {argv[1]}"
            source = script.read_text()
            own, passed_on = (argv[2:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv[2:], [])
            for flag in (a.split("=")[0] for a in own if a.startswith("--")):
                assert f'"{flag}"' in source, f"{page.name}: {argv[1]} has no option {flag}"
            if passed_on:  # after `--`: reconstruct's flags, which the script passes on
                assert '"--"' in source, f"{page.name}: {argv[1]} passes nothing on after --"
                try:
                    parser.parse_args(["reconstruct", "obs.uvfits", "--out", "o", *passed_on])
                except SystemExit as stop:
                    raise AssertionError(f"{page.name}: `{' '.join(passed_on)}` are no reconstruct flags") from stop
