"""The MFU sweep: compile and model variants of the 304M GPT's training step, side by side.

sft distribution, packed, flash_attn.cute (auto when flash-attn-4 is missing); per variant a
recompile, a warm-up until steady, then 8 steps timed one by one; a row per variant with
the median step, useful tokens/s, MFU and the GPU kernel time split (matmul / attention /
other / optimizer / loss), then the sorted table and the full-benchmark command with the
fastest settings that keep the math. See `seqpack.bench.sweep` for the variant recipes.

    python benchmarks/gpu_train_sweep.py                       # one H100: about 7-8 minutes
    python benchmarks/gpu_train_sweep.py --variants blocks,blocks+cd,model
    python benchmarks/gpu_train_sweep.py --tiny --device cpu --variants blocks,blocks+rope   # CPU smoke test

Any `seqpack bench train` flag works (--steps, --warmup, --budget-s, --dists, ...).
JSON in $OUT/sweep_train.json (rewritten after every variant).
"""

import argparse
import sys

from seqpack.bench import sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sweep.add_arguments(parser)
    return sweep.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
