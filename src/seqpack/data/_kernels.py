"""Numba kernels for the data pipeline. Private: callers check their inputs first.

- `gather`: copy pieces ``src[start:start+len]`` back to back into ``out`` (no per-token
  index array, ~1 ns per token).
- `fill_step`: the online packer's step builder: documents longest first, each to the
  rank with the least attention cost so far among ranks where it fits, into that rank's
  best-fitting row (see `seqpack.data.online`).
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def gather(src, starts, lens, out):
    pos = 0
    for i in range(starts.shape[0]):
        s = starts[i]
        n = lens[i]
        for k in range(n):
            out[pos + k] = src[s + k]
        pos += n
    return pos


@numba.njit(cache=True)
def _fits(free, r, rows, L):
    for b in range(rows):
        if free[r, b] >= L:
            return True
    return False


@numba.njit(cache=True)
def _best_rank(free, cost, ndocs, waiting, rows, L, max_docs):
    """The waiting rank with the least cost whose rows can hold L, or -1."""
    best = -1
    for r in range(waiting.shape[0]):
        if waiting[r] and ndocs[r] < max_docs and _fits(free, r, rows, L):
            if best < 0 or cost[r] < cost[best]:
                best = r
    return best


@numba.njit(cache=True)
def _best_row(free, r, rows, L):
    """Best fit inside rank r: the row with the least room that holds L."""
    best = -1
    for b in range(rows):
        f = free[r, b]
        if f >= L and (best < 0 or f < free[r, best]):
            best = b
    return best


@numba.njit(cache=True)
def fill_step(lengths, order, forced, ranks, rows, capacity, max_docs, tol, out_rank, out_row):
    """Assign documents to (rank, row) for one step.

    lengths: (N,) int64 piece lengths, each <= capacity; order: (N,) longest first;
    forced: (N,) bool, documents that waited long enough to be placed whatever the
    balance; ranks x rows bins of ``capacity`` tokens; max_docs: most documents a rank may
    take this step; tol: the attention-cost spread allowed inside a round. out_rank/out_row
    come filled with -1; placed documents get their (rank, row). Returns the number placed.

    Documents are dealt in *rounds*, one per rank: the next longest documents go to the
    ranks in order of least attention cost (sum of squared lengths) so far, each into its
    best-fitting row. A round whose documents differ in cost by more than ``tol`` (a long
    document with no partner of similar length in the buffer) is undone and its first
    document waits for a later step, so every rank gets nearly the same multiset of
    lengths and both tokens and attention cost balance. A round stays incomplete only when
    the ranks still waiting in it cannot hold any remaining document (they are full).
    """
    n = order.shape[0]
    free = np.full((ranks, rows), capacity, np.int64)
    cost = np.zeros(ranks, np.float64)
    ndocs = np.zeros(ranks, np.int64)
    status = np.zeros(n, np.int8)  # by position in order: 0 candidate, 1 placed, 2 waits
    waiting = np.ones(ranks, np.bool_)
    r_item = np.empty(ranks, np.int64)
    r_rank = np.empty(ranks, np.int64)
    r_row = np.empty(ranks, np.int64)
    placed = 0
    ptr = 0
    while True:
        while ptr < n and status[ptr] != 0:
            ptr += 1
        if ptr >= n:
            break
        waiting[:] = True
        count = 0
        q = ptr
        c0 = float(lengths[order[ptr]]) ** 2
        force = forced[order[ptr]]
        while q < n and count < ranks:
            if status[q] != 0:
                q += 1
                continue
            i = order[q]
            L = lengths[i]
            if count > 0 and c0 - float(L) * float(L) > tol and not force:
                break  # too short to partner the round's first document
            r = _best_rank(free, cost, ndocs, waiting, rows, L, max_docs)
            if r >= 0:
                b = _best_row(free, r, rows, L)
                free[r, b] -= L
                cost[r] += float(L) * float(L)
                ndocs[r] += 1
                waiting[r] = False
                status[q] = 1
                out_rank[i] = r
                out_row[i] = b
                r_item[count] = q
                r_rank[count] = r
                r_row[count] = b
                count += 1
            elif count == 0:
                status[q] = 2  # the first document fits no rank at all this step
                break
            q += 1
        if count == 0 or count == ranks or force:
            placed += count
            continue
        # incomplete round: fine if the ranks still waiting are full, else undo it
        full = True
        for k in range(n):
            if status[k] != 1 and _best_rank(free, cost, ndocs, waiting, rows, lengths[order[k]], max_docs) >= 0:
                full = False
                break
        if full:
            placed += count
            continue
        for c in range(count):
            q, r, b = r_item[c], r_rank[c], r_row[c]
            L = lengths[order[q]]
            free[r, b] += L
            cost[r] -= float(L) * float(L)
            ndocs[r] -= 1
            status[q] = 0
            out_rank[order[q]] = -1
            out_row[order[q]] = -1
        status[r_item[0]] = 2  # the round's first document waits for a partner
    return placed
