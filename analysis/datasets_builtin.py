"""The bundled datasets of dataset mode, their builders and their readers.

Two names are sources for `analyze --dataset` (analysis.dataset), each a text file built on
first use into assets/datasets (generated, not versioned: a few seconds) with one text per line
after a few header lines that start with "# ":

- ``corpus``: the first CORPUS_TEXTS lines of the project's generated training corpus
  (models.corpus.generate() with its default CorpusConfig, in its shuffled order, duplicates
  kept as the embedded models saw them): the data the embedded models were trained on.
- ``stdlib-docstrings``: real English prose, built offline from the docstrings of this Python's
  standard library (module, class and function docstrings, read with `ast`, never imported):
  blank-line separated paragraphs of 20-400 words that read as English sentences (no code, no
  doctest lines, no tables, no field lists), whitespace joined, deduplicated, in the order of
  the sorted source files. Python Software Foundation License (PSF-2.0), as CPython itself.

`python -m analysis.datasets_builtin` rebuilds both files (the docstrings depend on the Python
version that runs it; the header says which, and a result's dataset fingerprint hashes the file).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path

from models.common import UserError, atomic_write

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "assets" / "datasets"
CORPUS_TEXTS = 5000
FILES = {"corpus": DATA_DIR / "corpus_texts.txt", "stdlib-docstrings": DATA_DIR / "stdlib_docstrings.txt"}
_BUILD_LOCK = threading.Lock()
NAMES = tuple(FILES)
MIN_WORDS, MAX_WORDS = 20, 400
MAX_BYTES = 2_000_000  # each file stays under ~2 MB (a deterministic thinning if over)

# stdlib folders that hold tests, demos, vendored or generated text rather than documentation
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "encodings", "config-3.11"}
_STOPWORDS = frozenset("""the a an is are was were be been being of to and or in on at by for with as
that this these those it its if not no but from which when then than can may will would should
must do does has have had into out all any each only also such other so more most""".split())
# prose may name identifiers (`obj`, some_name, *args, [optional], and/or); these mark code
_PROSE_CHARS = re.compile(r"[A-Za-z0-9 ,.;:'\"()\-?!_`/*\[\]]")
_CODE_HINTS = (">>>", "...", "::", "==", "+--", "|", "{", "}", "=", "<", ">", "\\", "#", "@", "%",
               "$", "->", "**")


def _header(name: str, texts: int) -> list[str]:
    if name == "corpus":
        return [f"# corpus: the first {texts} lines of models.corpus.generate() (CorpusConfig defaults),",
                "# the project's own generated training corpus. Rebuild: python -m analysis.datasets_builtin"]
    ver = sys.version.split()[0]
    return [f"# stdlib-docstrings: {texts} prose paragraphs ({MIN_WORDS}-{MAX_WORDS} words) from the "
            f"docstrings of the Python {ver} standard library.",
            "# Licence: Python Software Foundation License Version 2 (PSF-2.0); Copyright (c) "
            "Python Software Foundation; All Rights Reserved.",
            "# Rebuild: python -m analysis.datasets_builtin (the text depends on the Python version)."]


# --- corpus ---------------------------------------------------------------------------------

def corpus_texts(n: int = CORPUS_TEXTS) -> list[str]:
    """The first `n` lines of the generated training corpus (deterministic)."""
    from models.corpus import generate

    return generate()[:n]


# --- stdlib docstrings ----------------------------------------------------------------------

def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files (sorted, tests and demos left out)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("test_") for p in rel[:-1]) or rel[-1].startswith("test_"):
            continue
        out.append(path)
    return out


def docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file, in source order (cleaned
    indentation); nothing when it does not parse."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc


def is_prose(lines: list[str]) -> bool:
    """Whether a paragraph (its lines) reads as English sentences: no indented or bulleted
    lines, no code or markup characters, letters and common words, sentence punctuation."""
    if any(ln[:1].isspace() or ln.lstrip()[:1] in "-*+:|>=.#" or ln.rstrip().endswith(":")
           for ln in lines):
        return False  # code blocks, lists, field lists, tables, section headings
    text = " ".join(ln.strip() for ln in lines)
    words = text.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or any(h in text for h in _CODE_HINTS):
        return False
    if not text[:1].isupper() or text[-1] not in ".?!":
        return False
    if sum(bool(_PROSE_CHARS.fullmatch(c)) for c in text) < 0.98 * len(text):
        return False
    alpha = [w.strip(",.;:'\"()?!").lower() for w in words]
    if sum(w.isalpha() for w in alpha) < 0.85 * len(words):
        return False
    return sum(w in _STOPWORDS for w in alpha) >= 0.2 * len(words)


def paragraphs(doc: str) -> Iterator[list[str]]:
    """Blank-line separated paragraphs of a docstring, as lists of lines."""
    block: list[str] = []
    for ln in doc.splitlines() + [""]:
        if ln.strip():
            block.append(ln)
        elif block:
            yield block
            block = []


def stdlib_texts(root: Path | None = None, max_bytes: int = MAX_BYTES) -> list[str]:
    """Prose paragraphs of the stdlib docstrings, deduplicated (case and spacing ignored), in
    the order of the sorted files; thinned to every k-th text if they exceed `max_bytes`."""
    seen: set[str] = set()
    out = []
    for path in stdlib_files(root):
        for doc in docstrings(path):
            for block in paragraphs(doc):
                if not is_prose(block):
                    continue
                text = " ".join(" ".join(ln.split()) for ln in block)
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(text)
    size = sum(len(t.encode()) + 1 for t in out)
    step = -(-size // max_bytes)
    return out[::step] if step > 1 else out


# --- files ----------------------------------------------------------------------------------

def build(name: str) -> Path:
    """Write the bundled file of `name` (atomically); returns its path."""
    texts = corpus_texts() if name == "corpus" else stdlib_texts()
    if any("\n" in t or "\r" in t for t in texts):
        raise ValueError(f"{name}: a text holds a line break")
    body = "\n".join(_header(name, len(texts)) + texts) + "\n"
    log.info("%s: %d texts, %d bytes -> %s", name, len(texts), len(body.encode()), FILES[name])
    FILES[name].parent.mkdir(parents=True, exist_ok=True)
    path = atomic_write(FILES[name], body)
    path.chmod(0o644)  # a shared data file, not a private temporary
    return path


def path_of(name: str) -> Path:
    """The file of a bundled dataset, built on first use; UserError when it cannot be."""
    path = FILES[name]
    with _BUILD_LOCK:
        if not path.is_file():
            try:
                build(name)
            except OSError as e:
                raise UserError(f"Cannot build the bundled dataset '{name}' at {path}: {e}; "
                                "run `python -m analysis.datasets_builtin`.") from e
    return path


def fingerprint(name: str) -> str:
    """A content hash of the bundled file (small: read whole)."""
    return f"builtin:{name}:sha256={hashlib.sha256(path_of(name).read_bytes()).hexdigest()[:16]}"


def header_lines(name: str) -> int:
    """How many header lines ("# ...") the file starts with; the texts' ids count after them."""
    n = 0
    with path_of(name).open("rb") as fh:
        for line in fh:
            if not line.startswith(b"# "):
                break
            n += 1
    return n


def count(name: str) -> int:
    """The number of texts of a bundled dataset."""
    with path_of(name).open("rb") as fh:
        return sum(1 for line in fh if line.strip()) - header_lines(name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in NAMES:
        build(name)


if __name__ == "__main__":
    main()
