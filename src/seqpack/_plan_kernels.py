"""
Numba kernels behind seqpack.plan. Private: plan_packing validates every input first.

Notable:
- Every kernel is O(n) or O(n log capacity) / O(n log bins); none sorts with a comparison
  sort. Piece lengths are bounded by capacity, so "sort longest first" is a counting sort.
- Best fit keeps a segment tree over *free-token values* 0..capacity whose leaves count the
  open bins with that much room, plus one stack of bin ids per value (linked lists in
  arrays). "Smallest free >= L" is then a walk of log2(capacity) steps (12 at 4,096).
- First fit keeps a max segment tree over *bins*; the leftmost bin with room >= L is one
  walk from the root. Bins not opened yet hold `capacity`, so a new bin is found the same way.
- All arrays are int64 except the trees (int32, small and hot in cache).
- Importing this module imports numba; plan.py imports it only inside plan_packing.
"""

import numba
import numpy as np

# overflow modes for make_pieces (plan.py maps the public names onto these)
KEEP = 0  # no document is longer than capacity (plan.py checked)
SPLIT = 1
TRUNCATE = 2
DROP = 3


@numba.njit(cache=True)
def pieces_longest_first(lengths, capacity, mode, max_len, doc, start, plen):
    """Cut documents into pieces and write them sorted longest first into doc, start,
    plen (each (P,) int64, preallocated). A stable counting sort over length: O(n + max_len);
    ties keep document order, a split document's pieces keep their order.
    Empty documents give no piece; long ones follow `mode`."""
    n = lengths.shape[0]
    # key = max_len - piece length, so ascending keys are descending lengths
    pos = np.zeros(max_len + 1, np.int64)
    for i in range(n):
        length = lengths[i]
        if length == 0:
            continue
        if length > capacity:
            if mode == DROP:
                continue
            if mode == TRUNCATE:
                length = capacity
        s = 0
        while s < length:
            e = min(s + capacity, length)
            pos[max_len - (e - s)] += 1
            s = e
    total = 0
    for key in range(max_len + 1):
        c = pos[key]
        pos[key] = total
        total += c
    for i in range(n):
        length = lengths[i]
        if length == 0:
            continue
        if length > capacity:
            if mode == DROP:
                continue
            if mode == TRUNCATE:
                length = capacity
        s = 0
        while s < length:
            e = min(s + capacity, length)
            key = max_len - (e - s)
            j = pos[key]
            pos[key] = j + 1
            doc[j] = i
            start[j] = s
            plen[j] = e - s
            s = e


@numba.njit(cache=True)
def group_by_window(doc, start, plen, window, window_bounds, doc2, start2, plen2):
    """Stable counting sort of pieces by window (doc // window) into doc2, start2, plen2:
    pieces sorted longest first become sorted by (window, longest first)."""
    wpos = window_bounds[:-1].copy()
    for j in range(doc.shape[0]):
        w = doc[j] // window
        k = wpos[w]
        wpos[w] = k + 1
        doc2[k] = doc[j]
        start2[k] = start[j]
        plen2[k] = plen[j]


@numba.njit(cache=True)
def make_pieces(lengths, capacity, mode, doc, start, stop):
    """Cut documents into pieces in document order, into preallocated doc, start, stop."""
    k = 0
    for i in range(lengths.shape[0]):
        length = lengths[i]
        if length == 0:
            continue
        if length > capacity:
            if mode == DROP:
                continue
            if mode == TRUNCATE:
                length = capacity
        s = 0
        while s < length:
            e = min(s + capacity, length)
            doc[k] = i
            start[k] = s
            stop[k] = e
            k += 1
            s = e


@numba.njit(cache=True, inline="always")
def _tree_add(tree, size, value, delta):
    i = size + value
    while i >= 1:
        tree[i] += delta
        i >>= 1


@numba.njit(cache=True, inline="always")
def _smallest_at_least(tree, size, value):
    """Smallest leaf index >= value whose count is > 0, or -1. tree[i] = sum of its children."""
    i = size + value
    if tree[i] > 0:
        return value
    # climb until a right sibling has something, then descend to its leftmost non-empty leaf
    while i > 1:
        if (i & 1) == 0 and tree[i + 1] > 0:
            i += 1
            while i < size:
                i <<= 1
                if tree[i] == 0:
                    i += 1
            return i - size
        i >>= 1
    return -1


@numba.njit(cache=True)
def best_fit(slen, capacity, max_docs, window_bounds, out, ndocs):
    """Best fit over pieces sorted longest first (per window): each piece goes to the open
    bin with the least room that still holds it, else to a new bin. Writes the bin of each
    piece into out (P,) and the pieces per bin into ndocs (>= num_bins,). Returns
    (num_bins, first bin of each window (W+1,))."""
    size = 1
    while size < capacity + 1:
        size <<= 1
    # tree leaves: number of open bins with exactly v free tokens; inner nodes: sums
    tree = np.zeros(2 * size, np.int32)
    # one LIFO stack of bin ids per free value: head[v] -> nxt[bin] -> ... -> -1
    head = np.full(capacity + 1, -1, np.int64)
    max_bins = ndocs.shape[0]
    nxt = np.empty(max_bins, np.int64)
    free = np.empty(max_bins, np.int64)
    num_windows = window_bounds.shape[0] - 1
    window_first_bin = np.empty(num_windows + 1, np.int64)
    nbins = 0
    for w in range(num_windows):
        window_first_bin[w] = nbins
        for k in range(window_bounds[w], window_bounds[w + 1]):
            length = slen[k]
            v = _smallest_at_least(tree, size, length)
            if v < 0:
                if nbins == max_bins:
                    raise RuntimeError("seqpack internal error: best_fit ran out of bins")
                b = nbins
                nbins += 1
                free[b] = capacity
                ndocs[b] = 0
            else:
                b = head[v]
                head[v] = nxt[b]
                _tree_add(tree, size, v, -1)
            free[b] -= length
            ndocs[b] += 1
            out[k] = b
            # a full bin, or one at max_docs, is closed: it never goes back on a stack
            if free[b] > 0 and ndocs[b] < max_docs:
                v = free[b]
                nxt[b] = head[v]
                head[v] = b
                _tree_add(tree, size, v, 1)
        # windows never share bins: take this window's open bins out of the structure
        for b in range(window_first_bin[w], nbins):
            if free[b] > 0 and ndocs[b] < max_docs:
                head[free[b]] = -1
                _tree_add(tree, size, free[b], -1)
    window_first_bin[num_windows] = nbins
    return nbins, window_first_bin


@numba.njit(cache=True, inline="always")
def _set_leaf_max(tree, size, b, value):
    i = size + b
    tree[i] = value
    # values only go down, so stop once an ancestor's max does not change
    while i > 1:
        i >>= 1
        left = tree[2 * i]
        right = tree[2 * i + 1]
        m = left if left >= right else right
        if tree[i] == m:
            break
        tree[i] = m


@numba.njit(cache=True)
def first_fit(slen, capacity, max_docs, window_bounds, out, ndocs):
    """First fit over pieces sorted longest first (per window): each piece goes to the
    lowest-numbered open bin that holds it. Same outputs as best_fit."""
    max_bins = ndocs.shape[0]
    size = 1
    while size < max_bins:
        size <<= 1
    # leaves: free tokens of bin b (capacity for bins not opened yet, 0 once closed);
    # inner nodes: max of children. Padding leaves past max_bins hold 0 so they are never chosen.
    tree = np.zeros(2 * size, np.int32)
    tree[size:size + max_bins] = capacity
    for i in range(size - 1, 0, -1):
        left = tree[2 * i]
        right = tree[2 * i + 1]
        tree[i] = left if left >= right else right
    ndocs[:] = 0
    num_windows = window_bounds.shape[0] - 1
    window_first_bin = np.empty(num_windows + 1, np.int64)
    nbins = 0
    for w in range(num_windows):
        window_first_bin[w] = nbins
        for k in range(window_bounds[w], window_bounds[w + 1]):
            length = slen[k]
            if tree[1] < length:
                raise RuntimeError("seqpack internal error: first_fit ran out of bins")
            i = 1
            while i < size:
                i <<= 1
                if tree[i] < length:
                    i += 1
            b = i - size
            if b >= nbins:
                nbins = b + 1
            ndocs[b] += 1
            f = tree[i] - length
            if ndocs[b] >= max_docs:
                f = 0
            _set_leaf_max(tree, size, b, f)
            out[k] = b
        # windows never share bins: close every bin of this window
        for b in range(window_first_bin[w], nbins):
            if tree[size + b] > 0:
                _set_leaf_max(tree, size, b, 0)
    window_first_bin[num_windows] = nbins
    return nbins, window_first_bin


@numba.njit(cache=True)
def next_fit(plen, capacity, max_docs, out):
    """Next fit in data order: one open bin; a piece that does not fit closes it.
    Writes the bin of each piece into out (P,); returns num_bins."""
    b = -1
    free = 0
    count = 0
    for k in range(plen.shape[0]):
        length = plen[k]
        if length > free or count >= max_docs:
            b += 1
            free = capacity
            count = 0
        free -= length
        count += 1
        out[k] = b
    return b + 1


@numba.njit(cache=True)
def wrapped(lengths, capacity, max_docs, doc, start, stop, bin_):
    """Concatenate documents in order and cut every `capacity` tokens (earlier, if a bin
    reaches max_docs pieces). Writes pieces into doc, start, stop, bin_ (preallocated,
    long enough); returns (num_pieces, num_bins)."""
    b = -1
    free = 0
    count = 0
    k = 0
    for i in range(lengths.shape[0]):
        length = lengths[i]
        s = 0
        while s < length:
            if free == 0 or count >= max_docs:
                b += 1
                free = capacity
                count = 0
            take = min(free, length - s)
            doc[k] = i
            start[k] = s
            stop[k] = s + take
            bin_[k] = b
            k += 1
            s += take
            free -= take
            count += 1
    return k, b + 1


@numba.njit(cache=True)
def scatter_by_bin(sdoc, sstart, slen, sorted_bin, pos, doc, start, stop):
    """Counting sort's scatter: piece k (in packing order) of bin b goes to slot pos[b]++.
    pos (num_bins,) starts at each bin's first output slot, so pieces are grouped by bin
    and keep packing order inside it."""
    for k in range(sdoc.shape[0]):
        b = sorted_bin[k]
        j = pos[b]
        pos[b] = j + 1
        doc[j] = sdoc[k]
        start[j] = sstart[k]
        stop[j] = sstart[k] + slen[k]
