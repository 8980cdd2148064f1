"""The documentation covers what is public: every name of ``gradsight.__all__`` and every command
is mentioned in README.md or a docs/ page reachable from it by links, and every file in docs/
is linked from one of those pages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest

import gradsight
from gradsight.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: ``[text](target)``, ``![alt](target "title")`` and ``<img src="target">``.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img\b[^>]*\bsrc=\"([^\"]+)\"")


def _local_targets(page: Path) -> list[tuple[Path, str]]:
    """``(file, anchor)`` of every link of ``page`` that is not a web address (anchor '' if none)."""
    out = []
    for match in _LINK.finditer(page.read_text(encoding="utf-8")):
        target, _, anchor = (match.group(1) or match.group(2)).partition("#")
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            out.append(((page.parent / target).resolve() if target else page.resolve(), anchor))
    return out


def links(page: Path) -> list[Path]:
    """The local files and folders ``page`` links to (links within the page left out)."""
    return [target for target, _ in _local_targets(page) if target != page.resolve()]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown page: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def reachable_pages() -> list[Path]:
    """README.md and every Markdown page reachable from it by links, in the order found."""
    pages, todo = [], [README.resolve()]
    while todo:
        page = todo.pop(0)
        if page in pages:
            continue
        pages.append(page)
        todo += [t for t in links(page) if t.suffix == ".md" and t.is_file()]
    return pages


@pytest.fixture(scope="module")
def documentation() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in reachable_pages())


def test_the_documentation_links_resolve() -> None:
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in reachable_pages()
              for target in links(page) if not target.exists()]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_the_documentation_anchors_name_headings() -> None:
    broken = [f"{page.relative_to(ROOT)} -> {target.name}#{anchor}" for page in reachable_pages()
              for target, anchor in _local_targets(page)
              if anchor and target.suffix == ".md" and anchor not in anchors(target)]
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


@pytest.mark.parametrize("name", gradsight.__all__)
def test_every_public_name_is_documented(name: str, documentation: str) -> None:
    """As users reach it: ``gs.NAME`` or ``gradsight.NAME``."""
    assert re.search(rf"\b(gs|gradsight)\.{re.escape(name)}\b", documentation), (
        f"gs.{name} is mentioned neither in README.md nor in a docs/ page linked from it")


@pytest.mark.parametrize("command", cli.list_commands(click.Context(cli)))
def test_every_command_is_documented(command: str, documentation: str) -> None:
    assert re.search(rf"\bgradsight {command}\b", documentation), (
        f"'gradsight {command}' is mentioned neither in README.md nor in a docs/ page linked from it")


def test_every_file_in_docs_is_linked() -> None:
    """From README.md or a page reachable from it; a link to a folder inside docs/ covers what is in it."""
    targets = {t for page in reachable_pages() for t in links(page)}
    folders = {t for t in targets if t.is_dir() and DOCS.resolve() in t.parents}
    unlinked = [path.relative_to(ROOT) for path in sorted(DOCS.rglob("*")) if path.is_file()
                and path.resolve() not in targets and not folders & set(path.resolve().parents)]
    assert not unlinked, "not linked from README.md or the pages it links to: " + ", ".join(map(str, unlinked))


def test_the_example_notebook_runs_and_shows_the_run(tmp_path: Path) -> None:
    """docs/notebook.ipynb, executed by a real kernel in an empty folder: no cell fails, and the
    outputs hold the monitor's card while it records, the run's once finished, the doctor's
    findings and the report in a sandboxed frame."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(DOCS / "notebook.ipynb", as_version=4)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(Path(gradsight.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p))
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    outputs = [[o for o in cell.outputs] for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in outputs for o in cell if o.output_type == "error"]
    html = [o.data["text/html"] for cell in outputs for o in cell if "text/html" in o.get("data", {})]
    live, finished, report = html
    assert "running" in live and "60 steps (0…59)" in live and live.count("<svg") == 2
    assert "finished" in finished and "60 steps (0…59)" in finished and "grad_rms by depth at step 59" in finished
    assert "<code>vanishing_gradients</code>" in finished  # the deep sigmoid MLP's gradients vanish
    printed = "".join(o.get("text", "") for cell in outputs for o in cell)
    assert "vanishing_gradients: Gradients vanish toward the input" in printed
    assert report.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in report
    assert "&lt;!DOCTYPE html&gt;" in report and "still recording" not in report
    assert (tmp_path / "runs" / "notebook" / "gradsight.sqlite").is_file()  # the run went where the notebook ran
