"""The documentation runs as written.

Every ```python block of README.md and docs/*.md is executed: the blocks of one file in order,
in one namespace (a later block may use the names an earlier one defined). Blocks that must
not run use another fence language (```bash, ```text). The documents talk to a server at
localhost:50051, as `gradserve serve --port 50051` gives; here a server is started in this
process on a free port, and that address is put in its place.

Also: docs/api.md names every public function, class and method; the commands a newcomer
copies from the README are there verbatim; nothing in the repository points outside it."""

from __future__ import annotations

import inspect
import re
import subprocess
import traceback
from pathlib import Path

import pytest

import gradserve as gs

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS_ADDRESS = "localhost:50051"
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line of the opening fence, language, code) of every fenced block, dedented."""
    blocks = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, language = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(ticks) and lines[i].strip().strip("`") == ""
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: the fence is never closed"
        blocks.append((start + 1, language.lower(), "\n".join(body) + "\n"))
        i += 1
    return blocks


@pytest.fixture(scope="module")
def docs_server():
    """A server in this process, standing in for the documents' localhost:50051."""
    from gradserve.server import serve

    running = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    return [(line, code) for line, lang, code in fenced_blocks(path) if lang == "python"]


@pytest.mark.parametrize(
    "path",
    [path for path in DOCUMENTS if python_blocks(path)],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_python_blocks_run(path, request, monkeypatch):
    blocks = python_blocks(path)
    address = None
    if any(DOCS_ADDRESS in code for _, code in blocks):
        address = request.getfixturevalue("docs_server")
    monkeypatch.chdir(ROOT)  # paths in the documents are relative to the repository
    namespace = {"__name__": "__docs__"}
    name = path.relative_to(ROOT).as_posix()
    for line, code in blocks:
        if address is not None:
            code = code.replace(DOCS_ADDRESS, address)
        error = None
        try:
            exec(compile(code, f"{name}:{line}", "exec"), namespace)
        except Exception:
            error = traceback.format_exc()
        if error is not None:
            pytest.fail(f"the Python block at {name}:{line} fails:\n{error}", pytrace=False)


def test_fences_name_their_language():
    """An unmarked fence, or a Python dialect the runner does not pick up (py, python3, pycon),
    would hide code that does not run."""
    for path in DOCUMENTS:
        for line, lang, _ in fenced_blocks(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            assert lang, f"{where}: give the fence a language (python, bash, text)"
            assert lang in ("python", "bash", "text", "json", "yaml", "protobuf"), where


def test_readme_keeps_the_commands_newcomers_copy():
    text = (ROOT / "README.md").read_text()
    blocks = {code.strip() for _, lang, code in fenced_blocks(ROOT / "README.md")}
    assert "pip install -e . && gradserve serve --port 50051 --metrics-port 9464" in blocks
    tests = text.split("\n## Tests\n", 1)
    assert len(tests) == 2, "the README needs a '## Tests' section"
    section = tests[1].split("\n## ", 1)[0]
    assert 'pip install -e ".[test]" && python -m pytest -q -p no:cacheprovider' in section
    # The in-process example comes before the service.
    assert text.index("gs.Engine()") < text.index("gs.Client(")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_between_documents_resolve():
    for path in DOCUMENTS + [ROOT / "bench" / "README.md"]:
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.relative_to(ROOT)}: {target} does not exist"
            if anchor:
                assert anchor in heading_anchors(linked), f"{path.relative_to(ROOT)}: {target}"


# ---- docs/api.md covers the public API -------------------------------------------------------

API = ROOT / "docs" / "api.md"


def public_methods(cls) -> set[str]:
    return {
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def test_api_reference_names_every_export():
    text = API.read_text()
    missing = [name for name in gs.__all__ if f"gs.{name}" not in text]
    assert not missing, f"docs/api.md does not document gs.{missing}"
    for cls in (gs.Engine, gs.Client, gs.Graph, gs.Spec):
        missing = [
            m
            for m in sorted(public_methods(cls))
            if not any(form in text for form in (f".{m}", f"`{m}`", f"`{m}("))
        ]
        assert not missing, f"docs/api.md does not document {cls.__name__}.{missing}"
    for name in ("logsumexp", "log_softmax", "softmax", "sigmoid", "relu", "softplus"):
        assert f"gs.nn.{name}" in text
    for name in ("gradserve.server.serve", "gradserve serve", "gradserve health"):
        assert name in text
    # Every flag of `gradserve serve` and `gradserve health`.
    from gradserve.__main__ import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands.values():
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in text, f"docs/api.md does not document {flag}"


def numpy_names() -> set[str]:
    import gradserve.numpy as gnp

    return {n for n in gnp.__all__ if not inspect.ismodule(getattr(gnp, n))}


def test_api_reference_lists_every_numpy_name():
    text = API.read_text()
    section = text.split("## gradserve.numpy", 1)[1].split("\n## ", 1)[0]
    missing = sorted(
        n for n in numpy_names() if f"`{n}`" not in section and f"`{n}(" not in section
    )
    assert not missing, f"docs/api.md's gradserve.numpy section does not list {missing}"


# ---- a self-contained repository -------------------------------------------------------------

OUTSIDE = [
    (re.compile(r"\.\./shared|\bshared/|\bANCHORS\b|\bAPI\.md\b"), "a file outside the repository"),
    (re.compile(r"\bissues? #?\d+", re.IGNORECASE), "an issue number"),
]
IN_PROSE = [
    (re.compile(r"(?<![\w&/#-])#\d+\b"), "an issue or pull-request number"),
    (
        re.compile(r"\b(sessions?|developers?|engineers?|teammates?)\b", re.IGNORECASE),
        "who worked on it",
    ),
]


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
        files = [ROOT / f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [
            f
            for f in ROOT.rglob("*")
            if f.is_file() and not {".git", "build", "__pycache__"} & set(f.parts)
        ]
    return [f for f in files if f.exists() and f.suffix not in (".png", ".pyc")]


def test_nothing_points_outside_the_repository():
    found = []
    for path in tracked_files():
        if path.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        checks = OUTSIDE + (IN_PROSE if path.suffix == ".md" else [])
        for n, line in enumerate(text.splitlines(), 1):
            for pattern, what in checks:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
