"""Hybrid models on one GPU: the fast kernels against the torch path, then packed vs padded training.

Run from the repository root, with flash-linear-attention installed (pure Python + Triton; its
wheels and einops carried over and installed with ``pip install --no-deps``):

    PYTHONUNBUFFERED=1 OUT=/some/dir python3 benchmarks/gpu_hybrid.py        # one H100, a few minutes
    python3 benchmarks/gpu_hybrid.py --tiny --device cpu                     # the same code, tiny, on a CPU

Parts, each in its own try/except so one failure never hides the others:
  1. env: versions, device, which kernel packages import (fla, causal_conv1d, mamba_ssm).
  2. kernels vs torch path on packed rows (documents shorter and longer than a 64-token chunk,
     boundaries inside and on chunk edges, padding; fp32 and bf16): seqpack.mixers'
     chunk_gated_delta_rule with flash-linear-attention's cu_seqlens kernel, causal_conv1d with
     seq_idx, the SSD scan with mamba_ssm's seq_idx kernel, each where installed; outputs and
     input gradients, largest relative difference.
  3. a tiny Qwen3.5 (gated DeltaNet + attention) with enable_packing on this device: packed logits
     and gradients against each document alone (fp32), sdpa and seqpack, and the bare model's leak.
  4. training, packed vs padded (benchmarks/hybrid_train.py): a Qwen3.5-like model (hidden 1024,
     8 layers, 3 DeltaNet : 1 attention), bf16, the same documents in the same optimiser steps;
     losses per step and useful tokens/s. The padded run is transformers as is (its own fla
     kernel for unpacked rows where installed).
Everything goes to $OUT/gpu_hybrid.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

RESULTS: dict = {"errors": []}
OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def save() -> None:
    if OUT is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "gpu_hybrid.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def part(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.time()
            print(f"== {name}", flush=True)
            try:
                RESULTS[name] = fn(*a, **k)
            except Exception as exc:  # one part failing must not hide the others
                traceback.print_exc()
                RESULTS["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"   ({time.time() - t0:.1f} s)", flush=True)
            save()
        return run
    return wrap


def importable(name: str) -> str | None:
    try:
        mod = __import__(name)
        return getattr(mod, "__version__", "yes")
    except Exception as exc:  # a broken install is an answer too
        return None if isinstance(exc, ImportError) else f"broken: {exc}"


@part("env")
def env(args):
    import transformers
    info = dict(torch=torch.__version__, transformers=transformers.__version__, device=args.device,
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None,
                fla=importable("fla"), causal_conv1d=importable("causal_conv1d"), mamba_ssm=importable("mamba_ssm"))
    print("  ", info)
    return info


def packed_seq_idx(L: int, device):
    from seqpack.boundaries import DocBoundaries
    rows = [[64, 100, 36, 128, 1, 200], [300, 63, 65, 7]]  # edges at 64 and 128, docs < and > a chunk
    return DocBoundaries.from_row_lengths(rows, L).doc_ids().to(device)


def rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def grads_of(fn, inputs):
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    w = torch.randn_like(out)
    (out.float() * w.float()).sum().backward()
    return out.detach(), [x.grad for x in leaves if x.requires_grad]


def compare_paths(name, fn, inputs):
    """fn(*inputs, use_kernel) on the kernel and on the torch path: outputs and gradients."""
    torch.manual_seed(1)
    out_k, g_k = grads_of(lambda *x: fn(*x, use_kernel=True), inputs)
    torch.manual_seed(1)
    out_t, g_t = grads_of(lambda *x: fn(*x, use_kernel=False), inputs)
    r = dict(out=rel(out_k, out_t), grads=max(rel(a, b) for a, b in zip(g_k, g_t)))
    print(f"   {name}: output rel {r['out']:.2e}, grads rel {r['grads']:.2e}")
    return r


@part("kernels")
def kernels(args):
    import torch.nn.functional as F
    from seqpack.mixers import causal_conv1d, chunk_gated_delta_rule, ssd_scan
    dev = torch.device(args.device)
    L = 600
    seq_idx = packed_seq_idx(L, dev)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        tag = "fp32" if dtype == torch.float32 else "bf16"
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(dev, dtype)
        if RESULTS.get("env", {}).get("fla"):
            q, k, v = rnd(2, L, 2, 64), rnd(2, L, 2, 64), rnd(2, L, 4, 64)
            gate = (-F.softplus(torch.randn(2, L, 4, generator=g))).to(dev, dtype)
            beta = torch.rand(2, L, 4, generator=g).to(dev, dtype)
            out[f"gated_delta_rule_{tag}"] = compare_paths(
                f"fla chunk_gated_delta_rule {tag}",
                lambda q, k, v, gg, b, use_kernel: chunk_gated_delta_rule(q, k, v, gg, b, seq_idx, use_qk_l2norm=True,
                                                                          use_kernel=use_kernel),
                [q, k, v, gate, beta])
        if RESULTS.get("env", {}).get("causal_conv1d"):
            x, w, b = rnd(2, 256, L), rnd(256, 4), rnd(256)
            out[f"causal_conv1d_{tag}"] = compare_paths(
                f"causal_conv1d {tag}",
                lambda x, w, b, use_kernel: causal_conv1d(x, w, b, seq_idx, activation="silu", use_kernel=use_kernel),
                [x, w, b])
        if RESULTS.get("env", {}).get("mamba_ssm"):
            x = rnd(2, L, 8, 64)
            dt = F.softplus(torch.randn(2, L, 8, generator=g)).to(dev, dtype)
            A = (-torch.rand(8, generator=g) * 4).to(dev, torch.float32)
            Bm, Cm, D = rnd(2, L, 2, 32), rnd(2, L, 2, 32), torch.randn(8, generator=g).to(dev, torch.float32)
            out[f"ssd_{tag}"] = compare_paths(
                f"mamba_chunk_scan_combined {tag}",
                lambda x, dt, A, Bm, Cm, D, use_kernel: ssd_scan(x, dt, A, Bm, Cm, seq_idx, D=D, use_kernel=use_kernel),
                [x, dt, A, Bm, Cm, D])
    if not out:
        print("   no kernel package imports here: nothing to compare")
    return out


@part("hf_tiny_qwen3_5")
def hf_tiny(args):
    from transformers import AutoConfig, AutoModelForCausalLM
    from seqpack.integrations import hf
    from seqpack.integrations.hf_verify import compare_packed, make_rows
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
               linear_key_head_dim=16, linear_value_head_dim=16, layer_types=["linear_attention", "full_attention"],
               pad_token_id=0)
    docs, batch = make_rows((70, 5, 130, 64, 33, 90), ((0, 1, 2), (3, 4, 5)), 128, capacity=220, device=args.device)
    out = {}
    for impl in ("sdpa", "seqpack"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_5_text", **cfg),
                                                 attn_implementation="sdpa", dtype=torch.float32).to(args.device)
        bare = compare_packed(model, docs, batch, form="position_ids", backward=False)["logits"]
        hf.enable_packing(model, attn_implementation=impl)
        r = compare_packed(model, docs, batch, form="collator")
        out[impl] = dict(r, bare_leak=bare)
        print(f"   {impl}: logits {r['logits']:.2e}, grads {r['grads']:.2e} (bare model: {bare:.2e})")
    return out


@part("training")
def training(args):
    import hybrid_train
    p = argparse.ArgumentParser()
    hybrid_train.add_arguments(p)
    if args.tiny:
        targv = ["--device", args.device, "--steps", "2", "--docs-per-step", "8", "--hidden", "64", "--layers", "4"]
    else:
        targv = ["--device", args.device, "--dtype", "bf16", "--hidden", "1024", "--layers", "8", "--vocab", "32000",
                 "--capacity", "4096", "--rows", "8", "--docs-per-step", "128", "--max-doc", "4096",
                 "--pad-bsz", "8", "--steps", "6", "--lr", "1e-4"]
    targs = p.parse_args(targv)
    r = hybrid_train.compare(targs)
    hybrid_train.print_table(targs, r)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes (a CPU check of the code)")
    args = p.parse_args()
    env(args)
    if args.device == "cuda":
        kernels(args)
    hf_tiny(args)
    training(args)
    print("errors:", RESULTS["errors"] or "none")
    return 1 if RESULTS["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
