"""The package stays light to import, and the CLI dispatches."""

import subprocess
import sys

import numpy as np

from seqpack import cli
from seqpack.demo import padded_fill


def test_import_is_light():
    code = ("import sys, seqpack; seqpack.DocBoundaries; seqpack.PackedBatch; seqpack.plan_packing; "
            "seqpack.packed_cross_entropy; "
            "print(','.join(m for m in ('transformers', 'datasets', 'matplotlib', 'numba', 'pyarrow') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_lists_commands(capsys):
    assert cli.main([]) == 2
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text


def test_every_cli_module_has_its_entry_points():
    import importlib

    for module, _ in list(cli.COMMANDS.values()) + list(cli.BENCHES.values()):
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), module


def test_bench_plan_runs(capsys):
    args = ["bench", "plan", "--docs", "5000", "--trl-docs", "", "--repeats", "1", "--no-compile-times"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("|  ")}
    assert set(rows) >= {"bfd", "ffd", "nextfit", "wrapped"}
    assert float(rows["bfd"][4]) > 99.0 and int(rows["bfd"][2].replace(",", "")) == 5000  # fill %, docs


def test_padded_fill_counts_padding_to_longest_in_batch():
    rows, fill = padded_fill(np.array([1, 3, 2, 2, 5]), batch_size=2)
    # batches [1,3] -> 2x3, [2,2] -> 2x2, [5] -> 1x5: 13 tokens in 6 + 4 + 5 slots
    assert rows == 5 and np.isclose(fill, 13 / 15)


def _imports_of(path):
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_product_code_never_imports_the_benchmarks():
    """seqpack.bench holds timing harnesses and experiments; the product must run without it
    (the CLI only names its modules, as strings)."""
    from pathlib import Path

    import seqpack

    root = Path(seqpack.__file__).parent
    offenders = [f"{p.relative_to(root)} imports {name}"
                 for p in sorted(root.rglob("*.py")) if "bench" not in p.relative_to(root).parts[:1]
                 for name in _imports_of(p) if name == "seqpack.bench" or name.startswith("seqpack.bench.")]
    assert not offenders, offenders


def test_labels_module_does_not_import_torch():
    code = "import sys, seqpack.labels; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
