"""The BlockMask tables in one Triton launch (CUDA; the CPU tests run it interpreted).

Same arithmetic as `seqpack.attention.blockmask._block_tables`, one program per
(row, query block): two binary searches in ``cu_seqlens`` for the segments of the block's
first and last token, the partial/full ranges in both directions, the index rows, and the
segment ids of the block's tokens. One allocation, one launch: the compiled torch builder
spent most of its ~0.23 ms per batch in launch and guard overhead (H100, torch 2.11).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _floor_div(a, b):
    # Triton's // truncates toward zero; these offsets can be negative.
    return tl.where(a >= 0, a // b, -((b - 1 - a) // b))


@triton.jit
def _segment(CU, S, t, LOG_S: tl.constexpr):
    """Largest s < S with CU[s] <= t (the segment holding token t; skips empty ones)."""
    lo = t * 0
    hi = lo + S
    for _ in range(LOG_S):
        mid = (lo + hi) // 2
        go = tl.load(CU + mid) <= t
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo


@triton.jit
def _tables(f, l, sf, sl, el, dlo, dhi, nb, width, NUM, IDX, FNUM, FIDX, row,
            BS: tl.constexpr, WBLOCK: tl.constexpr):
    cmin = tl.maximum(sf, f + dlo)
    cmax = tl.minimum(el - 1, l + dhi)
    lo = _floor_div(cmin, BS)
    hi = _floor_div(cmax, BS)
    jmin = tl.maximum(tl.maximum(-_floor_div(-sl, BS), -_floor_div(-(l + dlo), BS)), lo)
    jmax = tl.minimum(tl.minimum(_floor_div(el, BS) - 1, _floor_div(f + dhi - BS + 1, BS)), hi)
    has_full = (sl <= f) & (jmin <= jmax)
    jmin = tl.where(has_full, jmin, hi + 1)
    jmax = tl.where(has_full, jmax, hi)
    n_left = jmin - lo
    tl.store(NUM + row, n_left + hi - jmax)
    tl.store(FNUM + row, jmax - jmin + 1)
    for p0 in range(0, width, WBLOCK):
        p = p0 + tl.arange(0, WBLOCK)
        m = p < width
        idx = tl.where(p < n_left, lo + p, jmax + 1 + p - n_left)
        tl.store(IDX + row * width + p, tl.minimum(tl.maximum(idx, 0), nb - 1), mask=m)
        tl.store(FIDX + row * width + p, tl.minimum(tl.maximum(jmin + p, 0), nb - 1), mask=m)


@triton.jit
def _blockmask_kernel(CU, KVN, KVI, FKVN, FKVI, QN, QI, FQN, FQI, DOCS, S, N, NB, WIDTH, LEFT, RIGHT,
                      BS: tl.constexpr, LOG_S: tl.constexpr, WBLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // NB
    i = pid - b * NB
    row_off = b * N
    f = i * BS
    l = tl.minimum(f + BS, N) - 1
    s_f = _segment(CU, S, row_off + f, LOG_S)
    s_l = _segment(CU, S, row_off + l, LOG_S)
    sf = tl.load(CU + s_f) - row_off
    sl = tl.load(CU + s_l) - row_off
    el = tl.load(CU + s_l + 1) - row_off
    _tables(f, l, sf, sl, el, -LEFT, RIGHT, NB, WIDTH, KVN, KVI, FKVN, FKVI, pid, BS, WBLOCK)
    _tables(f, l, sf, sl, el, -RIGHT, LEFT, NB, WIDTH, QN, QI, FQN, FQI, pid, BS, WBLOCK)  # transposed
    t = f + tl.arange(0, BS)
    m = t < N
    tl.store(DOCS + row_off + t, _segment(CU, S, row_off + t, LOG_S), mask=m)


def block_mask_tensors(cu_seqlens: torch.Tensor, left: int, right: int, B: int, N: int, bs: int, width: int):
    """Same outputs as ``blockmask._block_mask_tensors``, int32, from one launch."""
    nb = -(-N // bs)
    rows = B * nb
    out = torch.empty(4 * rows + 4 * rows * width + B * N, dtype=torch.int32, device=cu_seqlens.device)
    sizes = [rows, rows * width] * 4 + [B * N]
    kvn, kvi, fkvn, fkvi, qn, qi, fqn, fqi, docs = torch.split(out, sizes)
    S = cu_seqlens.numel() - 1
    wblock = min(1024, triton.next_power_of_2(max(width, 1)))
    _blockmask_kernel[(rows,)](cu_seqlens, kvn, kvi, fkvn, fkvi, qn, qi, fqn, fqi, docs, S, N, nb, width,
                               left, right, BS=bs, LOG_S=max(1, S.bit_length()), WBLOCK=wblock)
    num = lambda t: t.view(B, 1, nb)  # noqa: E731
    idx = lambda t: t.view(B, 1, nb, width)  # noqa: E731
    return ((num(kvn), idx(kvi), num(fkvn), idx(fkvi)), (num(qn), idx(qi), num(fqn), idx(fqi)), docs.view(B, N))
