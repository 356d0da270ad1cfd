"""Every ```python block of every docs/*.md page runs, in order, one namespace per page.

A page's blocks share one namespace (a later block may use an earlier
block's names), run in a fresh temporary working directory with matplotlib
on the Agg backend. A block that raises fails the page's test with the
block's number and first line.
"""

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list:
    """The source of each ```python fenced block, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


def _pages():
    return sorted(DOCS.glob("*.md"))


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def test_docs_folder_has_pages():
    names = {p.name for p in _pages()}
    assert {"index.md", "misconceptions.md", "loss_scaling.md", "studies.md", "api.md"} <= names


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, src in enumerate(python_blocks(page.read_text()), start=1):
        code = compile(src, f"{page.name}[block {i}]", "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            first = src.strip().splitlines()[0] if src.strip() else ""
            raise AssertionError(f"{page.name} block {i} ({first!r}) raised {exc!r}") from exc
    import matplotlib.pyplot as plt

    plt.close("all")
    assert os.getcwd() == str(tmp_path)


def test_relative_links_between_pages_resolve():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
