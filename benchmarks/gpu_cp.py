"""Context parallelism on ONE GPU: what ``--cp 1`` costs, and one cp rank's time and memory.

Rows of the table, all on the same packed step (the 304M GPT by default, 32K tokens of
SFT-like documents, bf16 autocast, forward + backward, no optimizer):

- ``no CP layer``: the model called as `seqpack train` calls it without ``--cp``.
- ``cp=1``: through the CP layer (`seqpack.parallel`) on a one-rank process group: shard,
  `CPContext`, `ulysses_attention` (which calls `varlen_attention` directly at cp=1).
  Expected: the same step time and memory.
- ``cp=N (one rank, simulated)``: what rank 0 of a cp group of N computes: the per-token
  layers on T/N tokens, attention over all T tokens for H/N heads. The all-to-alls are
  replaced by a copy of the same size (shapes and memory as on N GPUs; the values are not
  those of a real run, and the step time leaves out the communication). The modelled
  all-to-all time at NVLink bandwidth is printed beside it (docs/train.md derives it).

    python benchmarks/gpu_cp.py                          # one H100: a few minutes (5 compiles)
    python benchmarks/gpu_cp.py --tiny --device cpu      # CPU smoke test of the same code

Prints a table; with $OUT set also writes $OUT/gpu_cp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

NVLINK_GBS = 450.0   # H100 NVLink, GB/s per direction per GPU
MATMUL_TFLOPS = 690.0  # bf16 8192^3 matmul measured on an H100


def a2a_bytes_per_layer(tokens: int, cp: int, n_head: int, n_kv_head: int, head_dim: int, nbytes: int) -> float:
    """Bytes one rank sends in one layer's forward + backward all-to-alls (docs/train.md)."""
    if cp == 1:
        return 0.0
    from seqpack.parallel import kv_repeats

    kv = n_kv_head * kv_repeats(n_kv_head, cp)
    per_tensor_head = (cp - 1) / cp * (tokens / cp) * head_dim * nbytes  # one head's share leaves the rank
    return 2 * per_tensor_head * (2 * n_head + 2 * kv)  # fwd: q, k, v, out; bwd: their gradients


def sft_lengths(total: int, capacity: int, seed: int = 0) -> list[int]:
    """Log-normal document lengths (median ~400, as the SFT-like set of docs/bench) filling ``total``."""
    rng = np.random.default_rng(seed)
    out, used = [], 0
    while used < total:
        n = int(min(capacity, max(8, rng.lognormal(np.log(400), 1.0))))
        n = min(n, total - used)
        out.append(n)
        used += n
    return out


def simulated_a2a(x, output_split_sizes, input_split_sizes, group, tag=""):
    """Stands in for all_to_all_single_autograd in the simulated rows: same shapes, a copy."""
    return x.clone()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="304M")
    p.add_argument("--tokens", type=int, default=32768, help="tokens of the packed step (the whole cp group's)")
    p.add_argument("--capacity", type=int, default=4096, help="longest document")
    p.add_argument("--cp", default="2,4,8", help="cp degrees to simulate (one rank each)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--compile", type=int, default=None, help="torch.compile the model (default: on CUDA)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model, 1K tokens (CPU smoke test)")
    args = p.parse_args(argv)
    if args.tiny:
        args.preset, args.tokens, args.capacity, args.steps, args.warmup, args.cp = "mini", 512, 128, 2, 1, "2,4"
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    compiled = cuda if args.compile is None else bool(args.compile)

    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    from seqpack.boundaries import DocBoundaries
    from seqpack.model import GPT, gpt_config
    from seqpack.model.gpt import prepare_context
    from seqpack.parallel import ContextParallel, init_mesh

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)

    cfg = gpt_config(args.preset, attn_backend=args.backend)
    torch.manual_seed(0)
    model = GPT(cfg).to(dev)
    T = args.tokens
    lengths = sft_lengths(T, args.capacity)
    b = DocBoundaries.from_lengths(lengths, T, max_seqlen=args.capacity).static(max_num_docs=len(lengths) + 8)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (T,), generator=g)
    labels = torch.roll(ids, -1)
    fwd = torch.compile(model, fullgraph=True, dynamic=False) if compiled else model
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)

    def measure(make_inputs):
        """Median fwd+bwd seconds, peak memory and activation memory (peak minus before)."""
        times = []
        peak = act = 0
        for i in range(args.warmup + args.steps):
            inputs = make_inputs()
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            with amp:
                loss, _ = fwd(*inputs[:2], boundaries=inputs[2], position_ids=inputs[3])
            loss.backward()
            if cuda:
                torch.cuda.synchronize(dev)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                if cuda:
                    peak = max(peak, torch.cuda.max_memory_allocated(dev))
                    act = max(act, torch.cuda.max_memory_allocated(dev) - before)
        return statistics.median(times), peak, act

    def plain():
        ctx = prepare_context(b, cfg, dev)
        return ids.to(dev), labels.to(dev), ctx, b.position_ids().to(dev)

    def through(cp):
        def make():
            shard = cp.shard(ids, labels, None, b)
            ctx = shard.context(prepare_context(shard.boundaries, cfg, dev))
            return shard.input_ids.to(dev), shard.labels.to(dev), ctx, shard.position_ids.to(dev)
        return make

    rows = []
    t, peak, act = measure(plain)
    rows.append(dict(config="no CP layer", tokens_per_rank=T, ms=1e3 * t, peak_gib=peak / 2**30, act_gib=act / 2**30,
                     a2a_ms=0.0))
    t, peak, act = measure(through(ContextParallel(init_mesh(1, device_type=dev.type))))
    rows.append(dict(config="cp=1", tokens_per_rank=T, ms=1e3 * t, peak_gib=peak / 2**30, act_gib=act / 2**30,
                     a2a_ms=0.0))
    real_a2a = funcol.all_to_all_single_autograd
    funcol.all_to_all_single_autograd = simulated_a2a
    try:
        for n in (int(x) for x in args.cp.split(",") if x.strip()):
            cp = ContextParallel()
            cp.size, cp.rank = n, 0  # rank 0 of n, without the other ranks
            try:
                cp.check_heads(cfg.n_head, cfg.n_kv_head)
            except ValueError as exc:
                print(f"cp={n}: skipped ({exc})")
                continue
            t, peak, act = measure(through(cp))
            nbytes = 2 if cuda else 4
            comm = cfg.n_layer * a2a_bytes_per_layer(T, n, cfg.n_head, cfg.n_kv_head, cfg.head_dim, nbytes)
            rows.append(dict(config=f"cp={n} (one rank, simulated)", tokens_per_rank=T // n, ms=1e3 * t,
                             peak_gib=peak / 2**30, act_gib=act / 2**30, a2a_ms=1e3 * comm / (NVLINK_GBS * 1e9)))
    finally:
        funcol.all_to_all_single_autograd = real_a2a
    dist.destroy_process_group()

    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"{args.preset} GPT, {T} tokens per step ({len(lengths)} documents), fwd+bwd, "
          f"{'bf16 autocast' if cuda else 'fp32'}, compile {'on' if compiled else 'off'}, backend {args.backend}, "
          f"{name}, torch {torch.__version__}")
    print("act GiB: memory allocated by forward + backward (activations, gradients) above what was allocated before")
    print(f"{'config':<28} {'tokens/rank':>11} {'step ms':>9} {'a2a ms (model)':>15} {'peak GiB':>9} {'act GiB':>8}"
          f" {'act vs cp=1':>11}")
    base = rows[1]["act_gib"]

    def gib(x, width):
        return f"{x:>{width}.2f}" if cuda else f"{'-':>{width}}"  # CPU: no allocator statistics

    for r in rows:
        print(f"{r['config']:<28} {r['tokens_per_rank']:>11} {r['ms']:>9.2f} {r['a2a_ms']:>15.3f} "
              f"{gib(r['peak_gib'], 9)} {gib(r['act_gib'], 8)} {gib(r['act_gib'] / (base or 1), 11)}")
    print(f"cp=1 vs no CP layer: {100 * (rows[1]['ms'] / rows[0]['ms'] - 1):+.1f}% step time")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_cp.json"), "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, preset=args.preset, tokens=T, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
