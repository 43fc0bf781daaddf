"""``seqpack bench train``: a whole training step, padded vs naive vs packed per backend.

The benchmark setup on one GPU: the 304M GPT (16 layers, d=1024, 8 heads of 128, vocab
50304), 32K tokens per step (8 rows of 4,096), bf16 autocast, torch.compile, fused AdamW,
document lengths log-normal (sigma 0.8) around a median of 400 ("sft": ~56 documents per
step) and 150 ("short": ~160), random token ids. Every configuration trains on the same
steps (same documents, same labels):

    packed auto       1D buffer, block-diagonal, backend="auto"
    packed <backend>  the same with each attention backend that can run the call
    naive             the same rows (8 x 4,096), plain causal attention per row
    padded            one document per row, 8 per micro-batch, padded to a power of two,
                      gradients accumulated over the micro-batches of the step

MFU = (6 x params x useful tokens + causal attention FLOPs within documents) / time / peak,
peak 989 TFLOP/s for H100/H200 bf16 dense (``--peak-tflops`` to override); useful tokens
are real document tokens (padding and cross-document attention are not counted).

What is timed (`Bench.time_config`):
- Warm-up: at least ``--warmup`` steps, then more until two consecutive steps take the
  same time per token slot within ``--warmup-tol`` (5%), at most ``--warmup-max`` steps;
  then one forward/backward of every shape the timed steps hold that the warm-up did not
  (padded rows). Compilation (dynamo, inductor, FA4's CuTe kernels, the Triton BlockMask
  builder) happens here.
- Then the weights and optimizer state are restored (every configuration trains the same
  timed steps from the same weights: their losses are comparable), Python's garbage
  collector is run and paused, and each of the ``--steps`` timed steps is timed on its
  own: host clock around ``train_step`` + ``torch.cuda.synchronize()``. The whole step:
  host-to-device copies, attention context (BlockMasks), forward, backward, gradient
  clipping, AdamW.
- Then the same steps again from the same weights, back to back with one synchronize at
  the end (``*_sustained``): the host prepares and launches step i+1 while the GPU runs
  step i, as in a training loop, so the per-step launch gap is hidden.
- Reported: the median step time (and min / max / mean), useful tokens/s and MFU as the
  median over steps of each step's own rate, and the sustained figures; every step's time
  is in the JSON. Compile
  counters (dynamo frames, FA4 kernels, BlockMask builder kernels) are read before and
  after the timed window: a configuration that compiled while being timed says so.

Notable:
- One model and optimizer for every configuration; ``--compile blocks`` by default: each
  transformer block and the head+loss are compiled on their own (fullgraph=True,
  dynamic=False), so a new shape or backend costs one block's compile, not sixteen
  (``--compile model``: the whole model as one graph). ``--compile-mode`` and
  ``--inductor key=value,...`` pass inductor settings; ``--fused-rope-norm``,
  ``--fused-qkv``, ``--residual`` the model's throughput options (`seqpack.model.gpt`).
  ``max_num_docs`` is set per distribution (its most crowded step, rounded up to 8):
  tight for varlen kernels, and auto, which under torch.compile sees only shapes, can
  tell the distributions apart.
- Auto picks backends from a calibration table of attention timings on this GPU. When
  there is none (a fresh machine), ``--calibrate auto`` measures one first for the
  model's attention shape (``seqpack.attention.bench.calibrate``: 1D buffer, fwd+bwd,
  medians 150 and 400) and registers it, as ``seqpack bench attention`` would.
- Each configuration is its own try/except: a backend that fails is reported, not fatal.
  A time budget (``--budget-s``) skips what is left when it runs out, saying so.
- ``--profile``: torch.profiler over a few steps of the best packed configuration, top
  kernels and the time split into attention / matmul / loss / optimizer / other (GPU
  kernels only: profiler ranges such as ``Optimizer.step#AdamW.step`` are not kernels).
- ``--ddp`` under torchrun: each GPU alone, then DDP over all; scaling = DDP useful
  tokens/s / (GPUs x one GPU's). NVLink multicast stays off (NCCL_NVLS_ENABLE=0 unless
  the environment says otherwise).
- Results go to stdout and, as JSON, to ``--json`` or ``$OUT/bench_train.json``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

__all__ = ["DISTRIBUTIONS", "synthetic_documents", "add_arguments", "run", "categorize_kernel", "jit_counters",
           "Bench", "profile_config"]

# document length medians: SFT-like ~400 tokens, short ~150; log-normal, sigma 0.8
# (as `seqpack bench attention`).
DISTRIBUTIONS = {"sft": 400, "short": 150}
SIGMA = 0.8
SLOW_BACKENDS = ("sdpa_dense", "sdpa_njt")  # O(L x max_seqlen) or eager-only: run last
SKIP_BACKENDS = ("eager",)                   # the reference implementation: far too slow at 32K


def synthetic_documents(median: float, tokens: int, capacity: int, vocab: int, seed: int):
    """Random-token documents, lengths log-normal around ``median`` clipped to [1, capacity],
    about ``tokens`` tokens in all."""
    from seqpack.batch import Documents

    rng = np.random.default_rng(seed)
    n = int(tokens / (median * math.exp(SIGMA ** 2 / 2))) + 16
    lengths = np.clip(np.round(np.exp(rng.normal(math.log(median), SIGMA, n))), 1, capacity).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Documents(rng.integers(0, vocab, int(offsets[-1]), dtype=np.int32), offsets)


def categorize_kernel(name: str) -> str:
    """attention / matmul / loss / optimizer / comm / other, from a kernel or op name."""
    n = name.lower()
    if any(k in n for k in ("nccl", "allreduce", "all_reduce", "reduce_scatter", "allgather")):
        return "comm"
    if any(k in n for k in ("flash", "fmha", "attention", "flex", "varlen", "sdpa", "_efficient_attention",
                            "cutlass_fwd", "cutlass_bwd")):
        return "attention"
    if "triton_tem" in n and not any(k in n for k in ("mm", "conv")):
        return "attention"  # inductor templates outside max-autotune: flex attention
    if any(k in n for k in ("adam", "multi_tensor", "foreach", "_fused_sgd", "clip_grad")):
        return "optimizer"
    if any(k in n for k in ("log_softmax", "logsumexp", "nll_loss", "cross_entropy", "softmax_backward")):
        return "loss"
    if any(k in n for k in ("gemm", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "cublas", "nvjet", "xmma",
                            "sm90_", "sm80_", "sm100_", "cutlass", "triton_tem", "mm_", "_mm")):
        return "matmul"
    return "other"


# ----------------------------------------------------------------------------------------


def add_arguments(p) -> None:
    p.add_argument("--tiny", action="store_true",
                   help="a tiny model and 1K-token steps (CPU smoke test of the whole benchmark)")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default=None, help="model preset (default 304M, tiny with --tiny)")
    p.add_argument("--capacity", type=int, default=None, help="tokens per row (default 4096; 256 with --tiny)")
    p.add_argument("--rows", type=int, default=8, help="rows per step (tokens per step = rows x capacity)")
    p.add_argument("--dists", default="sft,short", help="comma-separated: " + ", ".join(DISTRIBUTIONS))
    p.add_argument("--backends", default=None,
                   help="comma-separated attention backends for packed (default: every one that can run "
                        "the call, eager excluded)")
    p.add_argument("--modes", default="auto,backends,naive,padded",
                   help="which configurations, in order: auto, backends, naive, padded")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first, at least (compilation happens here)")
    p.add_argument("--warmup-max", type=int, default=8,
                   help="warm up beyond --warmup until two consecutive steps agree within --warmup-tol, "
                        "at most this many steps")
    p.add_argument("--warmup-tol", type=float, default=0.05, help="relative step-time agreement that ends the warm-up")
    p.add_argument("--global-warmup", type=int, default=1, choices=(0, 1),
                   help="one eager step and a trivial compile before the first configuration (one-time JIT work "
                        "out of its warm-up)")
    p.add_argument("--compile", default=None, choices=("none", "model", "blocks"),
                   help="default: blocks on CUDA, none on CPU")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (inductor), e.g. max-autotune-no-cudagraphs (expanded into options)")
    p.add_argument("--inductor", default=None,
                   help="inductor options, comma-separated key=value, e.g. coordinate_descent_tuning=1")
    p.add_argument("--fused-rope-norm", type=int, default=0, choices=(0, 1),
                   help="model option: RoPE + QK norm as one autograd function (same function)")
    p.add_argument("--fused-qkv", type=int, default=0, choices=(0, 1),
                   help="model option: q, k, v from one matmul (same parameters)")
    p.add_argument("--residual", default="fp32", choices=("fp32", "autocast"),
                   help="model option: residual stream in fp32 or in the autocast dtype (bf16: numerics change)")
    p.add_argument("--loss-chunk", type=int, default=0, help="fused head+CE chunk size (0: plain logits)")
    p.add_argument("--compare-loss-chunk", type=int, default=0,
                   help="also time the best packed config with this loss chunk, e.g. 8192 (0: skip; run 1 on the "
                        "H100 found the chunked head 3%% slower than plain logits)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--budget-s", type=float, default=400.0, help="skip configurations once this much time is spent")
    p.add_argument("--profile", type=int, default=1, help="profile the best packed configuration (1) or not (0)")
    p.add_argument("--calibrate", default="auto", choices=("auto", "1", "0"),
                   help="time the attention backends for auto first: auto = on CUDA when this GPU has no "
                        "calibration table yet")
    p.add_argument("--ddp", action="store_true", help="under torchrun: one GPU alone, then DDP over all")
    p.add_argument("--ddp-bucket-mb", type=int, default=25, help="with --ddp: DDP gradient bucket size in MiB")
    p.add_argument("--ddp-split-graphs", type=int, default=0, choices=(0, 1),
                   help="with --ddp: dynamo's DDPOptimizer splits compiled graphs at bucket boundaries (1, torch's "
                        "default) or not (0, seqpack's default: faster, docs/bench/train.md)")
    p.add_argument("--json", default=None, help="write results here (default: $OUT/bench_train.json if $OUT is set)")
    p.add_argument("--seed", type=int, default=0)


def _defaults(args):
    tiny = args.tiny
    args.preset = args.preset or ("tiny" if tiny else "304M")
    args.capacity = args.capacity or (256 if tiny else 4096)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compile is None:
        args.compile = "blocks" if args.device.startswith("cuda") else "none"
    return args


class Bench:
    """One Trainer (model, compiled forward, optimizer) and precollated steps per (dist, mode)."""

    def __init__(self, args):
        from seqpack.train.config import TrainConfig
        from seqpack.train.trainer import Trainer

        self.args = args
        self.t0 = time.perf_counter()
        vocab = 512 if args.tiny else 50257
        world = int(os.environ.get("WORLD_SIZE", "1")) if args.ddp else 1
        self.rows = args.rows * world  # DDP: every GPU gets args.rows rows (weak scaling)
        self.steps_needed = args.warmup + args.steps
        tokens_per_step = self.rows * args.capacity
        scale = args.capacity / 4096 if args.tiny else 1.0
        self.dists = [d.strip() for d in args.dists.split(",") if d.strip()]
        self.docs = {d: synthetic_documents(max(DISTRIBUTIONS[d] * scale, 2), tokens_per_step * (self.steps_needed + 2),
                                            args.capacity, vocab, args.seed + i) for i, d in enumerate(self.dists)}
        from seqpack.plan import plan_packing

        self.plans = {d: plan_packing(self.docs[d].lengths, args.capacity, strategy="bfd", seed=args.seed)
                      for d in self.dists}
        self.max_num_docs = {d: self._max_num_docs(d) for d in self.dists}
        self.cfg = TrainConfig(preset=args.preset, capacity=args.capacity, rows_per_step=self.rows,
                               steps=10 ** 6, warmup_steps=1, lr=1e-4, device=args.device, compile=args.compile,
                               dist="ddp" if args.ddp else "none", progress=False, save=False,
                               loss_chunk=args.loss_chunk, peak_tflops=args.peak_tflops, out="/tmp/seqpack-bench",
                               pad_multiple=0 if args.compile != "none" else 8, compile_mode=args.compile_mode,
                               inductor=args.inductor, fused_rope_norm=bool(args.fused_rope_norm),
                               fused_qkv=bool(args.fused_qkv), residual=args.residual,
                               ddp_bucket_mb=args.ddp_bucket_mb, ddp_split_graphs=bool(args.ddp_split_graphs))
        first = self.dists[0]
        self.trainer = Trainer(self.cfg.replace(max_num_docs=self.max_num_docs[first]), docs=self.docs[first],
                               vocab_size=vocab, plan=self.plans[first])
        self.batches: dict = {}
        # GPT-2 style non-zero output projections and head: with the model's zero init every
        # block starts as the identity and attention could not change the loss, which the
        # loss comparison between configurations relies on. Then keep the initial weights
        # on the host (1.2 GB for the 304M model) to restart every configuration from them.
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        model = self.trainer.model
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("c_proj.weight") or name.startswith("lm_head"):
                    std = 0.02 / math.sqrt(2 * model.config.n_layer) if "c_proj" in name else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        pin = self.trainer.device.type == "cuda"  # pinned: restoring 1.2 GB takes tens of ms, not hundreds
        self.init_weights = [p.detach().to("cpu", copy=True) for p in model.parameters()]
        if pin:
            self.init_weights = [w.pin_memory() for w in self.init_weights]

    def _max_num_docs(self, dist: str) -> int:
        """Static cu_seqlens size for a distribution: its most crowded micro-batch, rounded up
        to 8. Tight, so varlen kernels launch few empty segments, and auto (which under
        torch.compile sees only shapes: tokens / max_num_docs) reads a feature close to the
        batches' real mean document length."""
        per_bin = self.plans[dist].docs_per_bin() + 1
        n = min(self.steps_needed, self.plans[dist].num_bins // self.rows) * self.rows
        world = self.rows // self.args.rows
        most = int(per_bin[:n].reshape(-1, self.rows // world).sum(axis=1).max())
        return -(-most // 8) * 8

    def steps(self, dist: str, mode: str) -> list:
        from seqpack.train.data import PackedLoader

        key = (dist, mode)
        if key not in self.batches:
            tr = self.trainer
            ld = PackedLoader(self.docs[dist], capacity=self.args.capacity, rows_per_step=self.rows, mode=mode,
                              max_num_docs=self.max_num_docs[dist], plan=self.plans[dist],
                              pad_multiple=tr.loader.pad_multiple, rank=tr.dist.rank, world=tr.dist.world)
            n = min(self.steps_needed, ld.steps_per_epoch)
            self.batches[key] = [ld.make_step(0, i) for i in range(n)]
        return self.batches[key]

    def set_backend(self, name: str) -> None:
        self.trainer.model.configure(attn_backend=name)

    def set_loss_chunk(self, chunk: int) -> None:
        self.trainer.model.configure(loss_chunk=chunk)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _warm_shapes(self, warm: list, timed: list) -> None:
        """Run (untimed) one micro-batch of every shape the timed steps hold that the
        warm-up did not: padded rows come in several lengths, each compiled once, and no
        compilation may land inside the timed window."""

        if self.trainer.dist.enabled:
            return  # ranks would run different extra steps (and DDP runs packed only: one shape)
        seen = {tuple(mb.input_ids.shape) for b in warm for mb in b.micro}
        for b in timed:
            for mb in b.micro:
                shape = tuple(mb.input_ids.shape)
                if shape not in seen:
                    seen.add(shape)
                    self._forward_backward(mb)
        self.trainer.optimizer.zero_grad(set_to_none=True)
        _sync(self.trainer.device)

    def _forward_backward(self, mb) -> None:
        """Compile a shape without changing the weights (no optimizer step)."""
        from seqpack.model.gpt import prepare_context

        tr = self.trainer
        ctx = prepare_context(mb.boundaries, tr.model_config, tr.device)
        mb = mb.to(tr.device)
        with tr.autocast():
            loss, _ = tr.forward(mb.input_ids, mb.labels, boundaries=ctx, position_ids=mb.position_ids)
        loss.backward()

    def reset_weights(self) -> None:
        """Every configuration starts from the same weights and an empty optimizer state, so
        their losses after the same steps can be compared (packed == padded, naive differs)."""
        tr = self.trainer
        with torch.no_grad():
            for p, v in zip(tr.model.parameters(), self.init_weights):
                p.copy_(v, non_blocking=True)
        tr.optimizer.state.clear()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.step = 0

    def _keep_warming(self, times: list[float], slots: list[int], warmup: int, warmup_max: int) -> bool:
        """Another warm-up step? Until ``warmup`` steps, then until the last two agree per
        token slot within the tolerance, never past ``warmup_max``. Under DDP every rank
        must run the same steps: they continue while any of them wants to."""
        n = len(times)
        if n >= warmup_max:
            more = False
        elif n < warmup:
            more = True
        elif n < 2:
            more = True
        else:  # time per token slot: padded steps differ in size
            a, b = times[-1] / max(slots[-1], 1), times[-2] / max(slots[-2], 1)
            more = abs(a - b) > self.args.warmup_tol * min(a, b)
        tr = self.trainer
        if tr.dist.enabled:
            from seqpack.train.dist import all_reduce_sum

            flag = torch.tensor([float(more)], device=tr.device)
            more = float(all_reduce_sum(flag, tr.dist)) > 0
        return more

    def time_config(self, dist: str, mode: str, *, warmup: int | None = None, steps: int | None = None,
                    warmup_max: int | None = None) -> dict:
        """Warm up until the step time is steady, then time each step on its own (module
        docstring: what is timed). Returns medians and every step's time."""
        from seqpack.train.metrics import step_flops

        args, tr = self.args, self.trainer
        dev = tr.device
        warmup = args.warmup if warmup is None else warmup
        n_timed = args.steps if steps is None else steps
        warmup_max = max(warmup, args.warmup_max if warmup_max is None else warmup_max)
        if mode == "padded":  # steps of different sizes rarely agree; every shape is compiled below anyway
            warmup_max = min(warmup_max, warmup + 2)
        batches = self.steps(dist, mode)
        timed = batches[:max(1, min(n_timed, len(batches)))]
        self.reset_weights()
        c0 = jit_counters()
        t_start = time.perf_counter()
        warm_t, warm_slots = [], []
        while warmup > 0 and self._keep_warming(warm_t, warm_slots, warmup, warmup_max):
            b = batches[(len(timed) + len(warm_t)) % len(batches)]  # the untimed steps first, then cycle
            t0 = time.perf_counter()
            tr.train_step(b)
            _sync(dev)
            warm_t.append(time.perf_counter() - t0)
            warm_slots.append(b.slots)
        warm_batches = [batches[(len(timed) + i) % len(batches)] for i in range(len(warm_t))]
        self._warm_shapes(warm_batches, timed)
        warm_s = time.perf_counter() - t_start

        self.reset_weights()  # the timed steps start from the initial weights (comparable losses)
        _sync(dev)
        c1 = jit_counters()
        t_gc = time.perf_counter()
        gc.collect()  # a full collection here, not inside a timed step (how long it took is recorded)
        gc_s = time.perf_counter() - t_gc
        gc_was_enabled = gc.isenabled()
        gc.disable()  # no collector pause inside a timed step
        times, losses = [], []
        try:
            for b in timed:
                t0 = time.perf_counter()
                loss = tr.train_step(b)
                _sync(dev)
                times.append(time.perf_counter() - t0)
                losses.append(loss)
            # sustained: the same steps again from the same weights, back to back with one
            # synchronize at the end, as a training loop runs them (the host prepares and
            # launches step i+1 while the GPU still runs step i)
            self.reset_weights()
            _sync(dev)
            t0 = time.perf_counter()
            for b in timed:
                tr.train_step(b)
            _sync(dev)
            sustained = time.perf_counter() - t0
        finally:
            if gc_was_enabled:
                gc.enable()
        c2 = jit_counters()

        world = tr.dist.world  # each rank's steps hold 1 / world of the rows
        peak = tr.peak
        useful = [b.useful_tokens * world for b in timed]
        flops = [step_flops(tr.num_params, b.useful_tokens, b.piece_lengths, tr.model_config) * world for b in timed]
        rates = [u / t for u, t in zip(useful, times)]
        slots = sum(b.slots for b in timed) * world
        compiled = {k: c2[k] - c1[k] for k in c2 if k in c1 and c2[k] != c1[k]}
        r = dict(tok_s=statistics.median(rates),
                 mfu=statistics.median(f / t for f, t in zip(flops, times)) / (peak * world) if peak else None,
                 fill=sum(useful) / max(slots, 1), step_ms=1000 * statistics.median(times),
                 step_ms_min=1000 * min(times), step_ms_max=1000 * max(times),
                 step_ms_mean=1000 * sum(times) / len(times), tok_s_mean=sum(useful) / sum(times),
                 step_ms_sustained=1000 * sustained / len(timed), tok_s_sustained=sum(useful) / sustained,
                 mfu_sustained=sum(flops) / sustained / (peak * world) if peak else None,
                 docs_per_step=sum(b.docs for b in timed) / len(timed) * world, warmup_s=warm_s,
                 loss=float(losses[-1]), loss_mean=float(torch.stack(losses).mean()), steps=len(timed),
                 warmup=len(warm_t),
                 micro_per_step=sum(len(b.micro) for b in timed) / len(timed),
                 step_times_ms=[round(1000 * t, 3) for t in times],
                 warmup_times_ms=[round(1000 * t, 1) for t in warm_t],
                 compile_in_warmup={k: c1[k] - c0[k] for k in c1 if k in c0 and c1[k] != c0[k]},
                 gc_collect_s=round(gc_s, 3))
        if compiled:
            r["compiled_in_timed_steps"] = compiled
        return r


def global_warmup(bench: Bench, backend: str = "auto", log=print) -> float:
    """Before the first configuration: one eager step (FA4's CuTe kernels, the BlockMask
    builder, cuBLAS handles) and a trivial compile (Triton, inductor's compile workers), so
    that the first configuration's warm-up holds only its own compile. Restores the
    trainer's compile wrappers; returns the seconds spent."""
    tr = bench.trainer
    t0 = time.perf_counter()
    kind = tr.cfg.compile
    try:
        if not tr.dist.enabled:
            tr.recompile(compile="none")
            bench.set_backend(backend)
            tr.train_step(bench.steps(bench.dists[0], "packed")[0])
            if tr.device.type == "cuda":
                torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(8, device=tr.device))
            _sync(tr.device)
            tr.optimizer.zero_grad(set_to_none=True)
            if tr.device.type == "cuda":
                torch.cuda.empty_cache()  # the eager step's activations (tens of GB) go back to the driver
            tr.recompile(compile=kind)
    except Exception as e:
        log(f"global warm-up failed ({type(e).__name__}: {str(e)[:200]}); the first configuration's warm-up "
            f"includes it")
        tr.optimizer.zero_grad(set_to_none=True)
        if tr.cfg.compile != kind:
            tr.recompile(compile=kind)
    if tr.device.type == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def jit_counters() -> dict[str, float]:
    """Compilation done so far in this process: dynamo frames and graphs, FA4 CuTe kernels,
    Triton BlockMask builder kernels. Read before and after a timed window."""
    out: dict[str, float] = {}
    try:
        from torch._dynamo.utils import counters

        out["dynamo_frames"] = int(counters["frames"]["total"])
        out["dynamo_graphs"] = int(counters["stats"]["unique_graphs"])
    except Exception:
        pass
    iface = sys.modules.get("flash_attn.cute.interface")
    if iface is not None:
        n = 0
        for fname in ("_flash_attn_fwd", "_flash_attn_bwd"):
            fn = getattr(iface, fname, None)
            for attr in dir(fn) if fn is not None else ():
                cache = getattr(fn, attr, None)
                if attr.startswith("compile_cache") and hasattr(cache, "__len__"):
                    try:
                        n += len(cache)
                    except TypeError:
                        pass
        out["fa4_kernels"] = n
    bm = sys.modules.get("seqpack.attention._blockmask_triton")
    if bm is not None:
        try:
            out["blockmask_kernels"] = sum(len(v[0]) for v in bm._blockmask_kernel.device_caches.values())
        except Exception:
            pass
    return out


# ----------------------------------------------------------------------------------------


def _candidate_backends(bench: Bench) -> list[str]:
    """Backends that can run the model's attention call on this device (packed 1D, grad),
    asked as the compiled model will ask (a backend that refuses torch.compile, such as
    sdpa_njt, is reported as unable instead of failing inside the compile)."""
    import dataclasses

    from seqpack.attention.api import BACKENDS, _context, _request
    from seqpack.boundaries import DocBoundaries

    tr = bench.trainer
    mc = tr.model_config
    dtype = torch.bfloat16 if tr.use_bf16 else torch.float32
    T = bench.args.rows * bench.args.capacity
    b = DocBoundaries.from_lengths([bench.args.capacity] * bench.args.rows, max_seqlen=bench.args.capacity).static(
        bench.max_num_docs[bench.dists[0]], bench.args.capacity).to(tr.device)
    q = torch.zeros(T, mc.n_head, mc.head_dim, device=tr.device, dtype=dtype, requires_grad=True)
    k = torch.zeros(T, mc.n_kv_head, mc.head_dim, device=tr.device, dtype=dtype, requires_grad=True)
    req = _request(q, k, k, _context(b, q), True, None)
    if bench.args.compile != "none":
        req = dataclasses.replace(req, compiling=True)
    support = {name: be.supports(req) for name, be in BACKENDS.items()}
    ok = [n for n, why in support.items() if why is None and n not in SKIP_BACKENDS]
    skipped = {n: why for n, why in support.items() if why is not None}
    fast = [n for n in ok if n not in SLOW_BACKENDS]
    slow = [n for n in ok if n in SLOW_BACKENDS]
    return fast, slow, skipped


def calibrate_attention(bench: Bench, log, force: bool = False) -> None:
    """Measure the attention backends for auto on this device unless a table exists."""
    from seqpack.attention.select import device_name, register_table, table_for, table_path

    tr = bench.trainer
    if tr.device.type != "cuda" and not force:
        return
    name = device_name(tr.device)
    if table_for(name) is not None and not force:
        log(f"auto: using the calibration table for {name}")
        return
    try:
        from seqpack.attention.bench import calibrate

        t0 = time.perf_counter()
        mc = tr.model_config
        dtype = torch.bfloat16 if tr.use_bf16 else torch.float32
        table = calibrate(tr.device, tokens=bench.args.rows * bench.args.capacity, row_len=bench.args.capacity,
                          heads=mc.n_head, kv_heads=mc.n_kv_head, head_dim=mc.head_dim, dtype=dtype,
                          medians=sorted(DISTRIBUTIONS.values()), layouts=("1d",), modes=("fwd_bwd",),
                          rep_ms=50.0, seed=bench.args.seed, log=lambda m: log("  calibrate " + m))
        register_table(table)  # this process's auto uses it from now on
        where = "this run only"
        if tr.device.type == "cuda":  # keep it for later runs on this GPU (never a CPU table: tests use the shipped one)
            path = table_path(table["device"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(table, indent=1) + "\n")
            where = str(path)
        log(f"auto: calibrated {name} in {time.perf_counter() - t0:.0f} s -> {where}")
    except Exception as e:
        log(f"auto: calibration failed ({type(e).__name__}: {e}); auto falls back to its fixed order")


def _row(dist, label, r) -> str:
    if "error" in r:
        return f"  {dist:<6} {label:<24} {r['error'][:90]}"
    mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else "    -"
    sus = f"{100 * r['mfu_sustained']:5.1f}%" if r.get("mfu_sustained") is not None else "    -"
    spread = f"{r.get('step_ms_min', r['step_ms']):.1f}-{r.get('step_ms_max', r['step_ms']):.1f}"
    warm = f"{r['warmup_s']:.1f} ({r.get('warmup', '?')})"
    note = "  COMPILED WHILE TIMED: " + str(r["compiled_in_timed_steps"]) if r.get("compiled_in_timed_steps") else ""
    return (f"  {dist:<6} {label:<24} {r['tok_s']:>12,.0f} {mfu:>7} {sus:>8} {r['fill'] * 100:>6.1f}% "
            f"{r['step_ms']:>9.1f} {spread:>13} {r['steps']:>3} {r['docs_per_step']:>7.1f} {warm:>11} "
            f"{r['loss']:>10.5f}{note}")


HEADER = (f"  {'dist':<6} {'config':<24} {'useful tok/s':>12} {'MFU':>7} {'MFU sus.':>8} {'fill':>7} {'step ms':>9} "
          f"{'min-max ms':>13} {'n':>3} {'docs':>7} {'warm-up s':>11} {'last loss':>10}")


def run_configs(bench: Bench, log) -> dict:
    args = bench.args
    want = [m.strip() for m in args.modes.split(",")]
    fast, slow, skipped = _candidate_backends(bench)
    if args.backends:
        chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
        fast, slow = [b for b in chosen if b not in SLOW_BACKENDS], [b for b in chosen if b in SLOW_BACKENDS]
    log(f"attention backends: run {', '.join(fast + slow) or 'none'}; cannot run here: "
        + "; ".join(f"{n} ({why})" for n, why in skipped.items()))
    # Bar-critical first, so a tight budget trims the least needed: auto, the backend
    # expected fastest (FlashAttention first in the registry), naive, padded, then the other
    # fast backends, then the slow ones.
    plan = []  # (label, mode, backend)
    if "auto" in want:
        plan.append(("packed auto", "packed", "auto"))
    if "backends" in want:
        plan += [(f"packed {b}", "packed", b) for b in fast[:1]]
    if "naive" in want:
        plan.append(("naive", "naive", "auto"))
    if "padded" in want:
        plan.append(("padded", "padded", "auto"))
    if "backends" in want:
        plan += [(f"packed {b}", "packed", b) for b in fast[1:] + slow]

    results: dict = {d: {} for d in bench.dists}
    log(HEADER)
    for label, mode, backend in plan:
        for dist in bench.dists:
            if bench.elapsed() > args.budget_s:
                results[dist][label] = {"error": f"skipped: time budget of {args.budget_s:.0f} s spent"}
                log(_row(dist, label, results[dist][label]))
                continue
            try:
                bench.set_backend(backend)
                if backend in SLOW_BACKENDS:  # seconds per step at 32K tokens: a few steps say enough
                    r = bench.time_config(dist, mode, warmup=1, steps=2, warmup_max=1)
                else:
                    r = bench.time_config(dist, mode)
                r.update(mode=mode, backend=backend)
                if mode == "packed" and backend == "auto":
                    r["auto_picks"] = _auto_choice(bench, dist)
            except Exception as e:  # one failing configuration must not end the benchmark
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                     "trace": traceback.format_exc()[-2000:], "mode": mode, "backend": backend}
                if bench.trainer.device.type == "cuda":
                    torch.cuda.empty_cache()
            results[dist][label] = r
            log(_row(dist, label, r) + (f"  (auto -> {r['auto_picks']})" if r.get("auto_picks") else ""))
    bench.set_backend("auto")
    return results


def _auto_choice(bench: Bench, dist: str) -> str | None:
    """The backend auto picks for this distribution's packed batches as the compiled model
    sees them (boundaries on the device: the choice comes from static shapes)."""
    try:
        from seqpack.attention import choose_backend

        tr = bench.trainer
        mc = tr.model_config
        b = bench.steps(dist, "packed")[0].micro[0].boundaries.to(tr.device)
        dtype = torch.bfloat16 if tr.use_bf16 else torch.float32
        q = torch.zeros(b.numel, mc.n_head, mc.head_dim, device=tr.device, dtype=dtype, requires_grad=True)
        k = torch.zeros(b.numel, mc.n_kv_head, mc.head_dim, device=tr.device, dtype=dtype, requires_grad=True)
        return choose_backend(q, k, k, b)
    except Exception:
        return None


def summarize(results: dict, log) -> dict:
    """The issue's bars per distribution: auto vs best backend, vs padded, vs naive."""
    verdict = {}
    for dist, rs in results.items():
        ok = {k: v for k, v in rs.items() if "tok_s" in v}
        auto = ok.get("packed auto", {}).get("tok_s")
        backends = {k: v["tok_s"] for k, v in ok.items() if k.startswith("packed ") and k != "packed auto"
                    and "loss chunk" not in k}
        best_name = max(backends, key=backends.get) if backends else None
        v = {"auto": auto, "best_backend": best_name, "best_backend_tok_s": backends.get(best_name)}
        lines = []
        picked = ok.get("packed auto", {}).get("auto_picks")
        same = best_name is not None and picked is not None and best_name == f"packed {picked}"
        v["auto_runs_best_backend"] = same
        for name, ref, bar in (("best single backend", backends.get(best_name), 1.0),
                               ("padded", ok.get("padded", {}).get("tok_s"), 3.5),
                               ("naive", ok.get("naive", {}).get("tok_s"), 1.1)):
            if auto and ref:
                ratio = auto / ref
                v[f"vs_{name.split()[0]}"] = ratio
                verdict_ = "PASS" if ratio >= bar else "FAIL"
                if name.startswith("best") and same and ratio < bar:
                    # auto ran that very backend (same compiled graph): the gap is run-to-run noise
                    verdict_ = (f"FAIL as measured; auto ran {picked} itself, so {100 * (1 - ratio):.1f}% "
                                f"is timing noise")
                lines.append(f"{ratio:.3f}x {name}{f' ({best_name})' if name.startswith('best') else ''} "
                             f"[bar {bar}x: {verdict_}]")
        pad = ok.get("padded", {})
        loss_of = lambda v: v.get("loss_mean", v.get("loss"))  # noqa: E731  (mean over the timed steps)
        pad_loss = loss_of(pad)
        if pad_loss:
            same_steps = lambda v: v.get("steps") == pad.get("steps")  # noqa: E731  (timed steps from the same weights)
            diffs = {k: abs(loss_of(v) - pad_loss) / abs(pad_loss) for k, v in ok.items()
                     if k.startswith("packed") and "loss chunk" not in k and same_steps(v)}
            v["loss_rel_diff_vs_padded"] = diffs
            naive = loss_of(ok["naive"]) if "naive" in ok and same_steps(ok["naive"]) else None
            worst = max(diffs, key=diffs.get) if diffs else None
            lines.append(f"same weights, same steps: mean packed losses within {diffs[worst]:.1e} of padded ({worst})"
                         + (f", naive {abs(naive - pad_loss) / abs(pad_loss):.1e}" if naive else "")
                         if worst else "")
        mfu, sus = ok.get("packed auto", {}).get("mfu"), ok.get("packed auto", {}).get("mfu_sustained")
        if mfu is not None:
            lines.append(f"MFU {100 * mfu:.1f}% per-step median, {100 * sus:.1f}% sustained "
                         f"[bar 55%: per-step {'PASS' if mfu >= 0.55 else 'FAIL'}, "
                         f"sustained {'PASS' if sus >= 0.55 else 'FAIL'}]")
        lines = [x for x in lines if x]
        log(f"  {dist}: packed auto " + ("; ".join(lines) if lines else "(no comparison available)"))
        verdict[dist] = v
    return verdict


def profile_best(bench: Bench, results: dict, log) -> dict | None:
    """torch.profiler over a few steps of the fastest packed configuration."""
    best = None
    for dist, rs in results.items():
        for label, r in rs.items():
            if label.startswith("packed") and "tok_s" in r and (best is None or r["tok_s"] > best[2]["tok_s"]):
                best = (dist, label, r)
    if best is None:
        return None
    dist, label, r = best
    bench.set_backend(r["backend"])
    bench.set_loss_chunk(r.get("loss_chunk", bench.args.loss_chunk))
    return profile_config(bench, dist, label, log)


def _is_kernel_event(key: str, e) -> bool:
    """A GPU kernel or copy, not a profiler range mirrored on the GPU timeline
    (``Optimizer.step#AdamW.step``, ``ProfilerStep#3``: they overlap the kernels they hold)."""
    if getattr(e, "is_user_annotation", False):
        return False
    return "#" not in key and not key.startswith(("Optimizer.", "ProfilerStep", "## "))


def profile_config(bench: Bench, dist: str, label: str, log, *, steps: int = 3, top: int = 25) -> dict:
    """torch.profiler over ``steps`` packed steps of the model as it is configured now:
    GPU kernel time per step split into attention / matmul / loss / optimizer / other."""
    from torch.profiler import ProfilerActivity, profile

    tr = bench.trainer
    batches = bench.steps(dist, "packed")
    cuda = tr.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = min(steps, len(batches))
    tr.train_step(batches[0])  # warm (already compiled)
    _sync(tr.device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for b in batches[:n]:
            tr.train_step(b)
        _sync(tr.device)
    wall_ms = 1000 * (time.perf_counter() - t0) / n
    events = prof.key_averages()

    def dev_time(e):
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, attr):
                return getattr(e, attr)
        return 0.0

    if cuda:  # kernels (and copies) only: an op's device time is already its kernels'
        timed = [(e.key, dev_time(e)) for e in events
                 if str(getattr(e, "device_type", "")).endswith("CUDA") and dev_time(e) > 0
                 and _is_kernel_event(e.key, e)]
        if not timed:  # older profilers: no device_type on averages
            timed = [(e.key, dev_time(e)) for e in events
                     if dev_time(e) > 0 and not e.key.startswith("aten::") and _is_kernel_event(e.key, e)]
    else:
        timed = [(e.key, e.self_cpu_time_total) for e in events if e.key.startswith("aten::") or "Optimizer" in e.key]
    total = sum(t for _, t in timed) or 1.0
    cats: dict = {}
    for key, t in timed:
        c = categorize_kernel(key)
        cats[c] = cats.get(c, 0.0) + t
    log(f"\nprofile: {label} on {dist}, {n} steps; {'GPU kernel' if cuda else 'CPU op'} time per step "
        f"{total / n / 1000:.1f} ms of {wall_ms:.1f} ms wall (profiled)")
    for c in sorted(cats, key=cats.get, reverse=True):
        log(f"  {c:<10} {cats[c] / n / 1000:8.2f} ms  {100 * cats[c] / total:5.1f}%")
    tops = sorted(timed, key=lambda kv: -kv[1])[:top]
    if top:
        log("  top kernels (ms per step, category):")
        for key, t in tops:
            log(f"    {t / n / 1000:8.3f}  {categorize_kernel(key):<9}  {key[:110]}")
    return dict(config=label, dist=dist, steps=n, wall_ms_per_step=wall_ms, busy_ms_per_step=total / n / 1000,
                categories_ms={c: v / n / 1000 for c, v in cats.items()},
                top=[dict(name=k, ms=t / n / 1000, category=categorize_kernel(k)) for k, t in tops])


def split_line(prof: dict | None) -> str:
    """``matmul 66.9 | attention 12.8 | other 29.9 | optimizer 4.6 | loss 4.7 ms`` from a profile."""
    if not prof:
        return "-"
    c = prof["categories_ms"]
    order = ["matmul", "attention", "other", "optimizer", "loss", "comm"]
    parts = [f"{k} {c[k]:.1f}" for k in order if k in c] + [f"{k} {v:.1f}" for k, v in c.items() if k not in order]
    return " | ".join(parts) + f" ms (kernels {prof['busy_ms_per_step']:.1f} ms/step)"


# NVLink multicast (NVLS) stays off: on shared hosts a program using it can take the GPUs
# out of service. Respected if the environment already sets them; set to off otherwise.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def run_ddp(args, log) -> dict:
    """Under torchrun: packed auto on each GPU alone (all GPUs at once, no communication),
    then the same per-GPU batch with DDP; scaling = DDP useful tokens/s / (GPUs x one GPU's)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        raise SystemExit("--ddp needs torchrun with 2+ processes: torchrun --nproc_per_node 2 "
                         "benchmarks/gpu_train.py --ddp")
    for k, v in NO_MULTICAST_ENV.items():
        os.environ.setdefault(k, v)  # before the process group: NCCL reads it at communicator creation
    cuda = args.device.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    t_all = time.perf_counter()
    log(f"DDP benchmark: {world} processes, backend {dist.get_backend()}, bucket {args.ddp_bucket_mb} MiB, "
        f"compiled graphs split at buckets: {'yes' if args.ddp_split_graphs else 'no'}; "
        + ", ".join(f"{k}={os.environ.get(k)}" for k in NO_MULTICAST_ENV))
    if os.environ.get("NCCL_NVLS_ENABLE", "0") != "0":
        log("WARNING: NCCL_NVLS_ENABLE is not 0 in this environment (NVLink multicast may be used)")
    dist_name = [d.strip() for d in args.dists.split(",") if d.strip()][0]
    out = {}
    for phase in ("single", "ddp"):
        args.ddp = phase == "ddp"
        args.dists = dist_name
        bench = Bench(args)
        dist.barrier()
        r = bench.time_config(dist_name, "packed")
        r["auto_picks"] = _auto_choice(bench, dist_name)
        # single: every rank measured its own GPU; ddp: time_config already counts all ranks
        t = torch.tensor([r["tok_s"]], dtype=torch.float64, device=bench.trainer.device)
        dist.all_reduce(t)
        out[phase] = dict(r, tok_s_all=float(t) / (world if phase == "ddp" else 1))
        unit = "GPUs" if cuda else "processes"
        what = (f"{world} {unit} each alone (sum)" if phase == "single" else f"DDP over {world} {unit}")
        log(f"  {what:<28} {out[phase]['tok_s_all']:>12,.0f} useful tok/s, median step {r['step_ms']:.1f} ms "
            f"({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}), {args.rows} x {args.capacity} tokens per GPU, "
            f"warm-up {r['warmup_s']:.0f} s ({r['warmup']} steps), auto -> {r['auto_picks']}")
        del bench
        torch._dynamo.reset()  # drop the compiled graphs (and what they hold) of this phase
        if cuda:
            torch.cuda.empty_cache()
    one = out["single"]["tok_s_all"] / world  # mean over the GPUs that each ran alone
    scaling = out["ddp"]["tok_s_all"] / (world * one)
    log(f"DDP scaling on {world} {'GPUs' if cuda else 'processes'}: {out['ddp']['tok_s_all']:,.0f} / "
        f"({world} x {one:,.0f}) = "
        f"{100 * scaling:.1f}% [bar 90%: {'PASS' if scaling >= 0.9 else 'FAIL'}]; "
        f"{time.perf_counter() - t_all:.0f} s")
    dist.destroy_process_group()
    return dict(world=world, one_gpu_tok_s=one, ddp_tok_s=out["ddp"]["tok_s_all"], scaling=scaling, phases=out,
                rank=rank, env={k: os.environ.get(k) for k in NO_MULTICAST_ENV})


def _environment(device: str) -> dict:
    """Versions and commit for the record. The commit is $SEQPACK_COMMIT when set (a copy of
    the tree on a lent GPU machine, whose .git may be stale or missing), else git's HEAD."""
    from importlib import metadata

    env = dict(torch=torch.__version__, device=device)
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpus"] = torch.cuda.device_count()
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    for dist_name in ("flash-attn-4", "flash_attn_4", "flash-attn", "nvidia-cutlass-dsl"):
        try:
            env[dist_name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            pass
        except Exception:
            pass
    env["commit"] = os.environ.get("SEQPACK_COMMIT", "")
    try:
        import subprocess

        env["commit"] = env["commit"] or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        pass
    return env


def quiet_known_warnings() -> None:
    """FA4's CuTe DSL warns at every kernel compile about an argument it cannot convert
    (harmless; the compile counters say when FA4 compiles): keep the log readable."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Argument aux_data .* cannot be converted to a JitArgument")
    warnings.filterwarnings("ignore", message=r"Profiler clears events at the end of each cycle")


def run(args) -> int:
    args = _defaults(args)
    quiet_known_warnings()
    lines: list[str] = []

    quiet = args.ddp and int(os.environ.get("RANK", "0")) != 0  # under torchrun rank 0 speaks

    def log(msg: str = "") -> None:
        if not quiet:
            print(msg, flush=True)
        lines.append(msg)

    env = _environment(args.device)
    log(f"seqpack bench train: {env}")
    if args.ddp:
        res = {"ddp": run_ddp(args, log), "env": env}
        if res["ddp"]["rank"] != 0:
            return 0
    else:
        bench = Bench(args)
        tr = bench.trainer
        mc = tr.model_config
        log(f"model {args.preset}: {tr.num_params / 1e6:.1f}M parameters ({mc.n_layer} layers, d={mc.n_embd}, "
            f"{mc.n_head} heads of {mc.head_dim}, vocab {mc.vocab_size}); {args.rows} x {args.capacity} tokens per step; "
            f"{'bf16 autocast' if tr.use_bf16 else 'fp32'}; compile {args.compile}; "
            f"{'fused' if tr.device.type == 'cuda' else 'foreach'} AdamW; max_num_docs {bench.max_num_docs}; "
            f"peak {tr.peak / 1e12 if tr.peak else '-'} TFLOP/s")
        log("MFU = (6 x params x useful tokens + causal attention FLOPs within documents) / time / peak; "
            "attention FLOPs = 12 x heads x head_dim x sum over documents of n(n+1)/2, per layer")
        log(f"set-up {bench.elapsed():.1f} s; per configuration: warm-up of {args.warmup} to {args.warmup_max} steps "
            f"(until two agree within {100 * args.warmup_tol:.0f}%), then {args.steps} steps timed one by one "
            f"(synchronized); step ms = median [min-max], tok/s and MFU = median of per-step rates; "
            f"MFU sus. = the same steps again back to back, one synchronize at the end (as a training loop)")
        if args.compile_mode or args.inductor or args.fused_rope_norm or args.fused_qkv or args.residual != "fp32":
            log(f"options: compile mode {args.compile_mode or 'default'}, inductor {args.inductor or '-'}, "
                f"fused_rope_norm {args.fused_rope_norm}, fused_qkv {args.fused_qkv}, residual {args.residual}")
        if args.calibrate != "0":
            calibrate_attention(bench, log, force=args.calibrate == "1")
        if args.global_warmup:
            log(f"global warm-up (one eager step, a trivial compile) {global_warmup(bench, log=log):.1f} s")
        results = run_configs(bench, log)
        if args.compare_loss_chunk and args.loss_chunk != args.compare_loss_chunk:
            _compare_loss_chunk(bench, results, log)
        log("\nbars:")
        verdict = summarize(results, log)
        prof = None
        if args.profile and bench.elapsed() < args.budget_s + 60:
            try:
                prof = profile_best(bench, results, log)
            except Exception as e:
                log(f"profile failed: {type(e).__name__}: {e}")
        log(f"\ntotal {bench.elapsed():.0f} s")
        res = {"env": env, "args": vars(args), "params": tr.num_params, "max_num_docs": bench.max_num_docs,
               "results": results, "verdict": verdict, "profile": prof}
    path = args.json or (os.path.join(os.environ["OUT"], "bench_train.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        res["log"] = lines
        Path(path).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {path}")
    return 0


def _compare_loss_chunk(bench: Bench, results: dict, log) -> None:
    """The fastest packed configuration again with the fused chunked head + cross-entropy."""
    args = bench.args
    best = {}
    for dist, rs in results.items():
        cands = {k: v for k, v in rs.items() if k.startswith("packed") and "tok_s" in v}
        if cands:
            best[dist] = max(cands, key=lambda k: cands[k]["tok_s"])
    if not best:
        return
    label0 = best[bench.dists[0]]
    backend = results[bench.dists[0]][label0]["backend"]
    label = f"{label0} + loss chunk {args.compare_loss_chunk}"
    bench.set_loss_chunk(args.compare_loss_chunk)
    for dist in bench.dists:
        if bench.elapsed() > args.budget_s:
            results[dist][label] = {"error": "skipped: time budget spent"}
            log(_row(dist, label, results[dist][label]))
            continue
        try:
            bench.set_backend(backend)
            r = bench.time_config(dist, "packed")
            r.update(mode="packed", backend=backend, loss_chunk=args.compare_loss_chunk)
        except Exception as e:
            r = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        results[dist][label] = r
        log(_row(dist, label, r))
    bench.set_loss_chunk(args.loss_chunk)
    bench.set_backend("auto")
