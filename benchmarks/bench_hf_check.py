"""Cost of seqpack's runtime isolation check (`seqpack.hf.check_isolation`) against one training step.

    python benchmarks/bench_hf_check.py                 # tiny llama on the CPU (hidden 64, 2 layers)
    python benchmarks/bench_hf_check.py --size small    # hidden 256, 4 layers

Prints one table: the step (forward + backward + AdamW on `rows` packed rows of `row_len`
tokens, from DataCollatorForPacking), the check as the packing hook runs it (one form: 1 packed
forward + 3 documents alone), and the explicit check of all four forms, with their ratio to the
step. benchmarks/gpu_hf.py runs the same measurement (`measure`) on the 349M Llama on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model, batch: dict, device, repeats: int = 5) -> dict:
    """Seconds: one training step on ``batch`` (the collator's dict), the hook's check (one form) and
    the explicit check (every form); and their ratios. ``model`` has packing enabled."""
    from seqpack.integrations import hf
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernels)
    hf.check_isolation(model, forms=["collator"])  # its first run: kernels for the probe's shapes
    out = {"step_s": _timed(step, device, repeats),
           "check_hook_s": _timed(lambda: hf.check_isolation(model, forms=["collator"]), device, repeats),
           "check_all_forms_s": _timed(lambda: hf.check_isolation(model), device, repeats)}
    out["hook_per_step"] = out["check_hook_s"] / out["step_s"]
    out["all_forms_per_step"] = out["check_all_forms_s"] / out["step_s"]
    return out


def print_table(label: str, r: dict) -> None:
    print(f"{'model':<28} {'step':>9} {'check (hook)':>13} {'/step':>6} {'check (4 forms)':>16} {'/step':>6}")
    print(f"{label:<28} {r['step_s'] * 1e3:7.1f}ms {r['check_hook_s'] * 1e3:11.1f}ms {r['hook_per_step']:6.2f} "
          f"{r['check_all_forms_s'] * 1e3:14.1f}ms {r['all_forms_per_step']:6.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "small"], default="tiny")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--row-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from seqpack.integrations import hf
    from seqpack.integrations.hf_collator import DataCollatorForPacking
    from seqpack.integrations.hf_verify import load_model, tiny_config
    if args.size == "tiny":
        model = load_model("llama", attn_implementation=args.attn)
    else:
        from transformers import AutoModelForCausalLM
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            tiny_config("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, head_dim=32, vocab_size=4096), attn_implementation=args.attn)
    hf.enable_packing(model, check=False)  # measured explicitly below
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(args.row_len / 4), 0.8, 64).astype(int), 8, args.row_len)
    examples = [{"input_ids": rng.integers(3, vocab, n).tolist()} for n in lengths]
    batch = DataCollatorForPacking(max_length=args.row_len, fixed_length=True)(examples)
    batch = {k: v for k, v in batch.items()}
    rows = batch["input_ids"].shape[0]
    keep = min(rows, args.rows)
    cut = {k: (v[:keep] if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in batch.items()}
    if keep < rows:  # fewer rows: the varlen kwargs must describe only them
        cut.pop("cu_seq_lens_q"), cut.pop("cu_seq_lens_k"), cut.pop("max_length_q"), cut.pop("max_length_k")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    r = measure(model, cut, "cpu")
    print_table(f"llama {params:.2f}M {args.attn} {keep}x{args.row_len} cpu", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
