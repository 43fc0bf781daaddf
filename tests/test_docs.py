"""Every Python and shell block of README.md and docs/*.md runs, so the docs cannot drift from the code.

Each fenced block is found by its language: ``python`` blocks run in a fresh interpreter,
``bash``/``sh``/``console`` blocks run in bash (``console``: only the ``$ `` lines), each in a
temporary directory with this checkout's ``seqpack`` and ``python`` first on the PATH and
HOME pointing into that directory (nothing is written to the user's cache). Output
listings are fenced ``text`` and are not run; a fence without a language fails the test
(say ``text`` or the language).

A block is run as written unless HTML comments right before it (invisible on GitHub) say
otherwise, one directive per comment:

- ``<!-- doctest: skip (REASON) -->``: the block is not run; pytest reports it as skipped
  with the reason (``pytest -rs tests/test_docs.py`` lists every skip).
- ``<!-- doctest: skip 'PREFIX' (REASON) -->``: shell lines starting with PREFIX are not run
  (each reported as a skip).
- ``<!-- doctest: parse 'PREFIX' (REASON) -->``: shell lines starting with PREFIX are only
  checked, not run: a ``seqpack`` command (also under ``torchrun -m seqpack.cli``) must be
  accepted by seqpack's argument parser; a ``python script.py`` command must name a script
  that exists, whose ``--help`` runs and lists every ``--flag`` the line uses. For
  commands sized for a GPU.
- ``<!-- doctest: replace 'OLD' 'NEW' -->``: the text OLD in the block is replaced by NEW
  before it runs (the CPU-sized or quick form of a command); OLD must occur.
- ``<!-- doctest: setup`` + lines + ``-->``: code (Python for a python block, bash for a
  shell block) run first, in the same interpreter or shell: the inputs a snippet assumes.
- ``<!-- doctest: install (REASON) -->``: a set-up line ``python3 -m venv DIR && DIR/bin/pip
  install ARGS && DIR/bin/CMD``: pip is not run (tests must not install); the extras it names
  must exist in pyproject.toml and its torch pin must be the one .ci/run installs; each
  ``DIR/bin/CMD`` runs as ``CMD`` in this environment.

docs/bench/*.md are not run: they are records (the command as run on a named device and
commit, and what it measured), not instructions; their commands are full-size GPU or CPU
benchmark runs. The commands a reader should run are in docs/benchmarks.md, which is run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell", "console": "shell"}
NOT_RUN = {"text", "toml", "json", "yaml", "diff", "ini"}
TIMEOUT = 600

pytestmark = pytest.mark.slow

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(.*?)\s*-->", re.S)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None = None
    skip_lines: list[tuple[str, str]] = field(default_factory=list)
    parse_lines: list[tuple[str, str]] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)
    setup: str = ""
    install: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _quoted(s: str) -> list[str]:
    return re.findall(r"'([^']*)'", s)


def _apply(block: Block, directive: str) -> None:
    """Record one ``doctest:`` directive on the block it precedes; unknown or malformed ones fail."""
    word, _, rest = directive.partition(" ") if not directive.startswith("setup\n") else ("setup", "", directive[6:])
    reason = re.search(r"\((.+)\)\s*$", rest, re.S)
    if word == "setup":
        block.setup += textwrap.dedent(rest) + "\n"
    elif word == "skip" and reason and not _quoted(rest[:reason.start()]):
        block.skip = reason.group(1)
    elif word in ("skip", "parse") and reason and len(_quoted(rest[:reason.start()])) == 1:
        prefix = _quoted(rest[:reason.start()])[0]
        (block.skip_lines if word == "skip" else block.parse_lines).append((prefix, reason.group(1)))
    elif word == "replace" and len(_quoted(rest)) == 2:
        block.replace.append(tuple(_quoted(rest)))
    elif word == "install" and reason:
        block.install = reason.group(1)
    else:
        raise AssertionError(f"{block.name}: cannot read the directive <!-- doctest: {directive} -->")


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    out, pending, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--"):
            j = i
            while "-->" not in lines[j]:
                j += 1
            comment = "\n".join(lines[i:j + 1])
            found = _DIRECTIVE.search(comment)
            if found:
                pending.append(found.group(1))
            i = j + 1
            continue
        m = _FENCE.match(line)
        if m:
            indent, fence, lang = m.groups()
            j = i + 1
            while not lines[j].strip().startswith(fence):
                j += 1
            text = textwrap.dedent("\n".join(lines[i + 1:j]))
            block = Block(path, i + 1, lang.lower(), text)
            for d in pending:
                _apply(block, d)
            pending = []
            out.append(block)
            i = j + 1
            continue
        if line.strip() and pending:
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: a doctest directive is not right before a block")
        i += 1
    return out


ALL_BLOCKS = [b for p in DOC_FILES for b in blocks_of(p)]


def _logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined (``console``: the ``$ `` lines only)."""
    out, cur = [], ""
    for raw in text.split("\n"):
        cur += raw[:-1] + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            out.append(cur)
            cur = ""
    return out


def _prepared(block: Block) -> str:
    text = block.text
    for old, new in block.replace:
        assert old in text, f"{block.name}: replace '{old}': not in the block (stale directive)"
        text = text.replace(old, new)
    if block.lang == "console":
        text = "\n".join(line[2:] for line in text.split("\n") if line.startswith("$ "))
    return text


def _items():
    for b in ALL_BLOCKS:
        if b.lang not in RUN:
            continue
        if b.skip:
            yield pytest.param(b, None, marks=pytest.mark.skip(reason=b.skip), id=b.name)
            continue
        yield pytest.param(b, None, id=b.name)
        if RUN[b.lang] == "shell":
            for line in _logical_lines(_prepared(b)):
                command = line.split("#")[0].strip()
                for prefix, reason in b.skip_lines:
                    if line.startswith(prefix):
                        yield pytest.param(b, line, marks=pytest.mark.skip(reason=reason), id=f"{b.name} {command}")
                for prefix, reason in b.parse_lines:
                    if line.startswith(prefix):
                        yield pytest.param(b, line, id=f"{b.name} {command} [parsed only: {reason}]")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "home" / ".cache")
    env["MPLBACKEND"] = "Agg"
    env["DOCTEST_REPO"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "1")
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


_PARSE = '''\
"""Check a documented command without running it (see tests/test_docs.py, directive parse)."""
import os, subprocess, sys
kind, argv = sys.argv[1], sys.argv[2:]
if kind == "cli":
    from seqpack.cli import build_parser
    args = build_parser(argv).parse_args(argv)
    assert getattr(args, "_module", None), f"not a seqpack command: {argv}"
else:
    script = os.path.join(os.environ["DOCTEST_REPO"], argv[0])
    assert os.path.isfile(script), f"no such script: {argv[0]}"
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    missing = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in done.stdout]
    assert not missing, f"{argv[0]} --help does not list {missing}"
print("parsed:", kind, *argv)
'''


def _parse_line(line: str) -> str:
    """The command that checks ``line`` (a seqpack or python-script command) without running it."""
    words = shlex.split(line, comments=True)
    while words and re.match(r"^\w+=", words[0]):
        words = words[1:]  # VAR=value prefixes
    if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["seqpack.cli"]:
        return shlex.join(["python", "_doctest_parse.py", "cli", *words[words.index("-m") + 2:]])
    if words and words[0] == "seqpack":
        return shlex.join(["python", "_doctest_parse.py", "cli", *words[1:]])
    scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
    assert scripts, f"parse: cannot tell the command of {line!r}"
    return shlex.join(["python", "_doctest_parse.py", "script", *words[scripts[0]:]])


def _install_line(block: Block, line: str) -> str:
    """The parts of a set-up line that run here: venv and pip checked, ``DIR/bin/CMD`` run as CMD."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; seqpack supports 3.10)
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    assert extras, "pyproject.toml names no extras"
    ci = (ROOT / ".ci" / "run").read_text()
    ci_torch = set(re.findall(r"torch==[\w.+]+", ci))
    keep = []
    for part in (p.strip() for p in line.split("&&")):
        words = shlex.split(part)
        if words[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]):
            continue
        if len(words) > 1 and words[0].endswith("/bin/pip") and words[1] == "install":
            for w in words[2:]:
                if w.startswith("torch=="):
                    assert {w} == ci_torch, f"{block.name}: pins {w}, .ci/run installs {ci_torch}"
                for names in re.findall(r"\.\[([^\]]*)\]", w):
                    unknown = set(names.split(",")) - extras
                    assert not unknown, f"{block.name}: extras {unknown} are not in pyproject.toml"
            continue
        keep.append(re.sub(r"^\S*/bin/", "", part))
    return " && ".join(keep)


def _run(cmd, tmp_path, name):
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (f"{name} failed (exit {done.returncode})\n--- stdout\n{done.stdout[-4000:]}"
                                  f"\n--- stderr\n{done.stderr[-4000:]}")
    return done


@pytest.mark.parametrize("block, line", list(_items()))
def test_block_runs(block: Block, line, tmp_path):
    """A block runs; or one line of it (a ``parse`` line) is accepted by the command's parser."""
    (tmp_path / "_doctest_parse.py").write_text(_PARSE)
    if line is not None:
        _run(["bash", "-c", _parse_line(line)], tmp_path, f"{block.name}: {line}")
        return
    text = _prepared(block)
    if RUN[block.lang] == "python":
        (tmp_path / "doc_block.py").write_text(block.setup + "\n" + text + "\n")
        _run([sys.executable, "doc_block.py"], tmp_path, block.name)
        return
    script = ["set -euo pipefail", block.setup, "set -x"]
    for line in _logical_lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if any(line.startswith(p) for p, _ in block.skip_lines + block.parse_lines):
            continue  # their own items: skipped, or parsed only
        if block.install:
            line = _install_line(block, line)
        script.append(line)
    (tmp_path / "doc_block.sh").write_text("\n".join(script) + "\n")
    _run(["bash", "doc_block.sh"], tmp_path, block.name)


def test_every_block_says_its_language():
    """A fence without a language would silently escape this test: say ``text`` for output."""
    unknown = [f"{b.name} ({b.lang or 'no language'})" for b in ALL_BLOCKS if b.lang not in RUN and b.lang not in NOT_RUN]
    assert not unknown, f"fence these blocks as python/bash (run) or text (not run): {unknown}"


def test_line_directives_match_a_line():
    """A ``skip``/``parse`` prefix that matches no line is stale: the docs changed under it."""
    stale = []
    for b in ALL_BLOCKS:
        lines = _logical_lines(_prepared(b)) if b.lang in RUN and not b.skip else []
        for prefix, _ in b.skip_lines + b.parse_lines:
            if not any(line.startswith(prefix) for line in lines):
                stale.append(f"{b.name}: '{prefix}'")
    assert not stale, f"directives that match no line: {stale}"
