"""Benchmarks and experiments: timing harnesses, sweeps and an experimental kernel.

    plan.py           `seqpack bench plan`: the planner's speed (and TRL's, when installed)
    train.py          `seqpack bench train`: a training step padded, naive and packed per backend
    sweep.py          variants of the training step (fusions, compile modes) for benchmarks/
    triton_varlen.py  an opt-in Triton varlen attention kernel that lost its race to
                      FlashAttention (docs/bench/attention.md); register it to try it

Product code never imports this package (a test checks it); the command line dispatches
``seqpack bench plan|train`` here. ``seqpack bench attention`` stays in
`seqpack.attention.bench`: it writes the calibration table ``auto`` reads.
"""
