"""Every ```python block of every docs/*.md page runs, in order, one namespace per page, and prints
what the page says it prints.

A page's blocks share one namespace (a later block may use an earlier
block's names), run in a fresh temporary working directory with matplotlib
on the Agg backend. A block that raises fails the page's test with the
block's number and first line.

Printed output is compared in three forms:

* ``print(...)  # OUTPUT: note``: a comment after a ``print`` call that
  starts like an output (a number, ``[``, ``(``, ``-``, True/False/None,
  nan/inf, or the first word the call prints) must start with what that
  line printed, whitespace collapsed; after it may come ``:``, ``,``, ``=``,
  ``(`` or a space and a note. A comment that starts with a word the call
  does not print is a note and is not compared.
* a ```python block followed directly by a ```output (or ```text) block: the
  block's whole output, line for line (trailing spaces ignored).
* a ```python (or ```pycon) block of ``>>>`` lines: run as a doctest
  (NORMALIZE_WHITESPACE, ELLIPSIS) in the page's namespace.
"""

import builtins
import doctest
import io
import os
import re
import sys
import tokenize
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```(?:python|pycon)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_OUTPUT = re.compile(r"[ \t]*\n(?:[ \t]*\n)*```(?:output|text)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list:
    """The source of each ```python fenced block, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


def blocks_with_output(text: str) -> list:
    """``(source, expected output or None)`` for each ```python block: the ```output / ```text block
    right after it (only blank lines between), if any."""
    out = []
    for m in _BLOCK.finditer(text):
        o = _OUTPUT.match(text, m.end())
        out.append((m.group(1), o.group(1) if o else None))
    return out


def print_comments(src: str) -> dict:
    """``{line number: comment text}`` for the lines of ``src`` that call print and end in a comment."""
    found = {}
    lines = src.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            if "print(" in lines[row - 1][:col]:
                found[row] = tok.string[1:].strip()
    return found


def _norm(text: str) -> str:
    """Whitespace collapsed, and none just inside brackets (numpy pads arrays with spaces)."""
    text = " ".join(text.split())
    return re.sub(r"\s+\]", "]", re.sub(r"\[\s+", "[", text))


def claimed_output_mismatch(comment: str, printed: str):
    """None when ``comment`` agrees with ``printed`` (or is a note, not an output); else a message."""
    out, note = _norm(printed), _norm(comment)
    if not note or not out:
        return None
    first = note.split(" ", 1)[0].rstrip(":,;")

    def kind(c):
        return "number" if c in "0123456789+-." else c

    words = ("True", "False", "None", "nan", "inf", "-inf")
    looks_like_output = ((kind(note[0]) == kind(out[0]) and kind(note[0]) in ("number", "[", "(", "'", '"'))
                         or (first in words and out.split(" ", 1)[0] in words)
                         or first == out.split(" ", 1)[0])
    if not looks_like_output:
        return None
    if note.startswith(out) and (len(note) == len(out) or note[len(out)] in " :,;=("):
        return None
    return f"prints {printed.rstrip()!r} but the comment says {comment!r}"


class _Recorder:
    """A ``print`` that also records, per line of the block being run, what each call printed."""

    def __init__(self, filename: str):
        self.filename = filename
        self.by_line: dict = {}
        self.all = io.StringIO()

    def __call__(self, *args, **kwargs):
        if kwargs.get("file") not in (None, sys.stdout):
            return builtins.print(*args, **kwargs)
        buf = io.StringIO()
        builtins.print(*args, **{**kwargs, "file": buf})
        text = buf.getvalue()
        self.all.write(text)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.filename:
            frame = frame.f_back
        if frame is not None:
            self.by_line.setdefault(frame.f_lineno, []).append(text)
        sys.stdout.write(text)


def _pages():
    return sorted(DOCS.glob("*.md"))


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]
    text = "```python\nprint(1)\n```\n\n```output\n1\n```\n```python\nx = 2\n```\ntext\n```text\nno\n```\n"
    assert blocks_with_output(text) == [("print(1)\n", "1\n"), ("x = 2\n", None)]


def test_output_comments_are_compared():
    src = 'x = 1  # not a print\nprint(x)  # 1: the note\nprint("a # b")\nprint([1, 2])   # shows the list\n'
    assert print_comments(src) == {2: "1: the note", 4: "shows the list"}
    assert claimed_output_mismatch("1: the note", "1\n") is None
    assert claimed_output_mismatch("shows the list", "[1, 2]\n") is None  # a note, not an output
    assert claimed_output_mismatch("[65504. inf 0. 1.]", "[6.5504e+04        inf 0.0000e+00 1.0000e+00]\n")
    assert claimed_output_mismatch("[ 0. 2.]", "[ 0.  2.]\n") is None
    assert claimed_output_mismatch("float32 36864", "float32 36864\n") is None
    assert claimed_output_mismatch("float32 9", "float32 36864\n")
    assert claimed_output_mismatch("1.0, every time", "1.0\n") is None
    assert claimed_output_mismatch("1.01", "1.0\n")  # a longer number is not a note after 1.0
    assert claimed_output_mismatch("3 -> 4: a note", "[2. 4.]\n") is None  # a number is no claim on an array
    assert claimed_output_mismatch("nan", "inf\n")


def test_docs_folder_has_pages():
    names = {p.name for p in _pages()}
    assert {"index.md", "misconceptions.md", "loss_scaling.md", "studies.md", "api.md"} <= names


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_page_code_blocks_run(page, tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg", force=True)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    wrong = []
    for i, (src, expected) in enumerate(blocks_with_output(page.read_text()), start=1):
        name = f"{page.name}[block {i}]"
        first = src.strip().splitlines()[0] if src.strip() else ""
        if first.startswith(">>>"):
            _run_doctest(src, namespace, name, wrong)
            continue
        recorder = _Recorder(name)
        namespace["print"] = recorder
        code = compile(src, name, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            raise AssertionError(f"{page.name} block {i} ({first!r}) raised {exc!r}") from exc
        finally:
            namespace.pop("print", None)
        for line, comment in print_comments(src).items():
            printed = recorder.by_line.get(line)
            if not printed:
                continue  # a print that did not run (a branch not taken)
            msg = claimed_output_mismatch(comment, printed[0])
            if msg:
                wrong.append(f"{name} line {line}: {msg}")
        if expected is not None:
            got = [ln.rstrip() for ln in recorder.all.getvalue().rstrip("\n").splitlines()]
            want = [ln.rstrip() for ln in expected.rstrip("\n").splitlines()]
            if got != want:
                wrong.append(f"{name}: the output block says {want} but the code prints {got}")
    import matplotlib.pyplot as plt

    plt.close("all")
    assert os.getcwd() == str(tmp_path)
    assert not wrong, "printed output differs from the page:\n" + "\n".join(wrong)


def _run_doctest(src, namespace, name, wrong):
    test = doctest.DocTestParser().get_doctest(src, namespace, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    if runner.failures:
        wrong.append(report.getvalue())


def test_relative_links_between_pages_resolve():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_api_reference_lists_every_public_name():
    """docs/api.md is generated by scripts/gen_api.py; rerun it when a public name is added."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_api", DOCS.parent / "scripts" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    text = (DOCS / "api.md").read_text()
    headings = set(re.findall(r"^### (\S+)$", text, re.MULTILINE))
    expected = {f"{modname}.{name}" for modname, _, _, items in gen_api.collect() for name, _ in items}
    missing = sorted(expected - headings)
    assert not missing, f"docs/api.md lacks {missing[:10]}: run python scripts/gen_api.py"
    assert {"lowprec.core.round_to", "lowprec.sweep.run_sweep", "lowprec.study.run_study"} <= headings


def test_every_fast_kernel_has_its_proof_section_in_kernels_md():
    """dispatch's tables promise the proof of each fast kernel's precondition in a docs/kernels.md section
    named after the kernel: every table entry has a heading that names it."""
    from lowprec.kernels import dispatch

    text = (DOCS / "kernels.md").read_text()
    named = set()
    for heading in re.findall(r"^###+ (.+)$", text, re.MULTILINE):
        named |= set(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", heading.split(":")[-1]))
    tables = (dispatch.ELEMENT_KERNELS, dispatch.FP32_TILE_KERNELS, dispatch.NARROW_KERNELS)
    missing = [k.name for table in tables for k in table if k.name not in named]
    assert not missing, f"docs/kernels.md has no section for {missing}"
