"""The ``seqpack`` command line.

Each command lives in the module of the stage it belongs to; that module defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``seqpack --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    "demo": ("seqpack.demo", "pack the bundled corpus, train a tiny GPT packed vs padded, write plots"),
    "pack": ("seqpack.data.pack_cli", "pack a dataset globally into Parquet rows"),
    "train": ("seqpack.train.cli", "train the GPT on packed data"),
    "verify": ("seqpack.integrations.hf_verify", "check a Hugging Face model isolates packed documents"),
}

# seqpack bench <what>
BENCHES = {
    "plan": ("seqpack.bench.plan", "time the planner"),
    "attention": ("seqpack.attention.bench", "time every attention backend; write the calibration table"),
    "train": ("seqpack.bench.train", "time a training step: padded, naive, packed per backend"),
}


def _add(sub, name, module, help_):
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(_module=module)
    return p


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqpack", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"seqpack {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show a traceback for errors about bad input")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen command's module is imported to add its arguments.
    words = [a for a in argv if not a.startswith("-")]
    chosen = words[0] if words else None
    for name, (module, help_) in COMMANDS.items():
        p = _add(sub, name, module, help_)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    bench = sub.add_parser("bench", help="benchmarks", description="benchmarks")
    bsub = bench.add_subparsers(dest="bench", metavar="WHAT", required=True)
    chosen_bench = words[1] if chosen == "bench" and len(words) > 1 else None
    for name, (module, help_) in BENCHES.items():
        p = _add(bsub, name, module, help_)
        if name == chosen_bench:
            importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    from seqpack import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    from seqpack.errors import InputError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (InputError, OSError) as e:
        # Bad input (or a path we cannot write): one line naming the value and the fix.
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"seqpack {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
