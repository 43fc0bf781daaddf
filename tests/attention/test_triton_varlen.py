"""The Triton kernels (the varlen attention kernel, the BlockMask builder) run by Triton's CPU
interpreter; skipped without Triton.

The interpreter must be chosen before triton is imported, so the check runs in a child
process with ``TRITON_INTERPRET=1``. It compares the forward and the three gradients with
the per-document float64 reference: causal and bidirectional, windows, GQA, zero-length
and length-1 segments, padding, a buffer that is no multiple of the tile sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqpack.attention.api import _request
from seqpack.attention.base import AttentionContext
from seqpack.bench.triton_varlen import TritonVarlen
from seqpack.boundaries import DocBoundaries

PRELUDE = r'''
import sys
import torch
import triton.runtime.interpreter as ti

# Triton 3.6's interpreter turns scalars into 1-element arrays and calls int() on them,
# which numpy >= 2.3 refuses; index the element instead (interpreter only).
_orig = ti._patch_lang_tensor
def _patched(tensor, scope):
    _orig(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
ti._patch_lang_tensor = _patched

sys.path.insert(0, sys.argv[1])
'''

CHECK = PRELUDE + r'''
from attn_ref import grads, make_qkv, reference, rel_err
from seqpack.attention.base import left_right_reach
from seqpack.bench.triton_varlen import varlen_bwd, varlen_fwd
from seqpack.boundaries import DocBoundaries

cases = [  # causal, window, lengths, tokens, heads, kv heads, dtype, fwd tiles, (dkdv, dq) tiles
    (True, None, [5, 1, 30, 0, 17], 70, 2, 2, torch.float32, (16, 16, 4, 1), ((16, 32, 4, 1), (32, 16, 4, 1))),
    (True, 7, [40, 3, 1, 20], 80, 4, 2, torch.float32, (16, 32, 4, 1), ((16, 16, 4, 1), (16, 16, 4, 1))),
    (False, None, [33, 12, 1], 60, 2, 1, torch.float32, (32, 16, 4, 1), ((16, 32, 4, 1), (32, 16, 4, 1))),
    (False, 5, [16, 16, 16, 3], 64, 2, 2, torch.float16, (16, 16, 4, 1), ((16, 16, 4, 1), (16, 16, 4, 1))),
]
for causal, window, lens, T, H, Hkv, dtype, fwd_tiles, bwd_tiles in cases:
    b = DocBoundaries.from_lengths(lens, T, max_seqlen=max(lens + [T - sum(lens)])).static(len(lens) + 3)
    q, k, v = make_qkv(b, H, Hkv, 16, dtype=dtype)
    left, right = left_right_reach(causal, window, b.max_seqlen)
    w = torch.randn(q.shape, dtype=torch.float64)
    want = grads(lambda *x: reference(*x, b, causal, window), q, k, v, w)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    o, lse = varlen_fwd(qd, kd, vd, b.cu_seqlens, 0.25, left, right, blocks=fwd_tiles)
    got = (o, *varlen_bwd(w.to(dtype), qd, kd, vd, o, lse, b.cu_seqlens, 0.25, left, right, blocks=bwd_tiles))
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    ref = (reference(q, k, v, b, causal, window, scale=0.25),) + tuple(
        grads(lambda *x: reference(*x, b, causal, window, scale=0.25), q, k, v, w)[1:])
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        err = rel_err(g, r)
        assert err < tol, (causal, window, lens, str(dtype), name, err)
print("ok")
'''


BLOCKMASK_CHECK = PRELUDE + r'''
import random
from seqpack.attention._blockmask_triton import block_mask_tensors
from seqpack.attention.base import left_right_reach
from seqpack.attention.blockmask import _block_mask_tensors
from seqpack.boundaries import DocBoundaries

r = random.Random(0)
for trial in range(16):
    bs = r.choice([2, 4, 16])
    if trial % 2:
        L = r.randint(1, 40)
        rows = [[r.randint(1, L)] * r.randint(0, 3) for _ in range(r.randint(1, 3))]
        rows = [row if sum(row) <= L else [L] for row in rows]
        b = DocBoundaries.from_row_lengths(rows, L)
        B, N = b.shape
    else:
        lens = [r.randint(0, 20) for _ in range(r.randint(0, 6))]
        b = DocBoundaries.from_lengths(lens, sum(lens) + r.randint(1, 30), max_seqlen=max(lens + [1]) + 4)
        B, N = 1, b.shape[0]
    b = b.static(b.num_segments + r.randint(0, 3))
    causal, window = r.random() < 0.5, r.choice([None, 1, 3, 7])
    left, right = left_right_reach(causal, window, b.max_seqlen)
    nb = -(-N // bs)
    width = r.choice([nb, min(nb, 1 + 2 * -(-max(b.max_seqlen - 1, 0) // bs))])
    want = _block_mask_tensors(b.cu_seqlens, torch.tensor([left, right]), B, N, bs, width)
    got = block_mask_tensors(b.cu_seqlens, left, right, B, N, bs, width)
    for w, g in zip(want[0] + want[1] + (want[2],), got[0] + got[1] + (got[2],)):
        assert torch.equal(w.int(), g.int()), (trial, w, g)
print("ok")
'''


def run_interpreted(code: str):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_kernels_match_reference_in_the_interpreter():
    run_interpreted(CHECK)


def test_triton_block_mask_builder_equals_the_torch_one():
    """The one-launch CUDA builder computes exactly the torch builder's tables."""
    run_interpreted(BLOCKMASK_CHECK)


def test_backend_refuses_what_it_cannot_run():
    b = DocBoundaries.from_lengths([3, 5])
    q = torch.randn(8, 2, 16)
    req = _request(q, q, q, AttentionContext(b), True, None)
    why = TritonVarlen().supports(req)
    assert why is not None and ("CUDA" in why or "not installed" in why)
    cuda = req.__class__(**{**req.__dict__, "device_type": "cuda", "dtype": torch.bfloat16, "head_dim": 256})
    if why != "triton is not installed":
        assert "head_dim 256" in TritonVarlen().supports(cuda)
