"""The training-step GPU benchmark in one run: `seqpack bench train` with its defaults.

REFERENCE.md section 3's training step (304M GPT, 32K tokens per step, SFT-like and short
length distributions, bf16 autocast, torch.compile, fused AdamW): padded, naive, packed
with each attention backend and packed auto; useful tokens/s, MFU (formula printed), the
issue's bars, a loss check (every configuration trains the same timed steps from the same
weights: packed must match padded, naive must not) and a profile of the fastest packed
configuration. Each configuration warms up until two steps agree within 5%, then each
timed step is synchronized and timed on its own; medians are reported (docs/bench/train.md).
Results: stdout, and JSON in $OUT/bench_train.json when $OUT is set.

    python benchmarks/gpu_train.py --budget-s 300           # one H100, about 6 minutes
    python benchmarks/gpu_train.py --tiny --device cpu      # CPU smoke test of the same code
    torchrun --standalone --nproc_per_node 2 benchmarks/gpu_train.py --ddp   # DDP scaling, 2 GPUs

Any `seqpack bench train` flag works here (--compile model, --inductor coordinate_descent_tuning=1,
--fused-rope-norm 1, --backends flex,torch_varlen, --budget-s, --steps, ...); the flags
worth setting come from benchmarks/gpu_train_sweep.py.
"""

import argparse
import sys

from seqpack.bench import train as bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
