"""
Numba kernels behind seqpack.plan. Private: plan_packing validates every input first.

Notable:
- Every kernel is O(n) or O(n log capacity) / O(n log bins); none sorts with a comparison
  sort. Piece lengths are bounded by capacity, so "sort longest first" is a counting sort.
- Best fit keeps one stack of open bins per *free-token value* 1..capacity (linked lists in
  arrays) and a two-level bitset of the non-empty stacks (64-bit words). "Smallest free
  >= L" reads two or three words at capacity 4,096. That is 2x faster than a segment tree
  over the same values (12 levels at 4,096), which made best fit the slowest stage.
- First fit keeps a max segment tree over *bins*; the leftmost bin with room >= L is one
  walk from the root. Bins not opened yet hold `capacity`, so a new bin is found the same way.
- Outputs are preallocated by plan.py with numpy: numpy asks for huge pages on big arrays,
  which makes first-touching hundreds of MB several times cheaper than numba's allocator.
- All arrays are int64 except the bitset (uint64) and first fit's tree (int32).
- Importing this module imports numba; plan.py imports it only inside plan_packing.
"""

import numba
import numpy as np

# what to do with a document longer than capacity (plan.py maps `overflow` onto these)
KEEP = 0  # there is none (plan.py checked)
SPLIT = 1
TRUNCATE = 2
DROP = 3


@numba.njit(cache=True, inline="always")
def _kept(length, capacity, mode):
    """Tokens of a document that go into pieces: all, the first `capacity` or none."""
    if length > capacity:
        if mode == DROP:
            return 0
        if mode == TRUNCATE:
            return capacity
    return length


@numba.njit(cache=True)
def pieces_longest_first(lengths, capacity, mode, max_len, doc, start, plen):
    """Cut documents into pieces and write them sorted longest first into doc, start,
    plen (each (P,) int64, preallocated; start zero-filled). A stable counting sort over
    length: O(n + max_len); ties keep document order, a split document's pieces keep their
    order. Empty documents give no piece; long ones follow `mode`.
    Only doc is scattered: plen is written in runs and start only where it is not 0 (most
    pieces start at 0). Each scattered array costs about as much as the rest of the pass."""
    n = lengths.shape[0]
    # key = max_len - piece length, so ascending keys are descending lengths
    pos = np.zeros(max_len + 1, np.int64)
    for i in range(n):
        length = _kept(lengths[i], capacity, mode)
        s = 0
        while s < length:
            e = min(s + capacity, length)
            pos[max_len - (e - s)] += 1
            s = e
    total = 0
    for key in range(max_len + 1):
        c = pos[key]
        pos[key] = total
        # all pieces of one key have the same length: fill plen in runs, not by scatter
        plen[total:total + c] = max_len - key
        total += c
    for i in range(n):
        length = _kept(lengths[i], capacity, mode)
        s = 0
        while s < length:
            e = min(s + capacity, length)
            key = max_len - (e - s)
            j = pos[key]
            pos[key] = j + 1
            doc[j] = i
            if s != 0:
                start[j] = s
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
        length = _kept(lengths[i], capacity, mode)
        s = 0
        while s < length:
            e = min(s + capacity, length)
            doc[k] = i
            start[k] = s
            stop[k] = e
            k += 1
            s = e


# ----------------------------------------------------------------------------------------
# a set of integers 0..n-1 as two levels of 64-bit words: bit i of `lo` says "i is in the
# set", bit w of `hi` says "lo[w] is not zero". "Smallest member >= v" reads lo[v // 64],
# then scans hi (one word up to n = 262,144, i.e. any realistic capacity), then reads one
# lo word. A generic any-depth version of this was 2x slower in numba, so two levels it is.

_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_ONE = np.uint64(1)
# count trailing zeros of a 64-bit word with a de Bruijn multiply (numba has no public ctz)
_DEBRUIJN_MAGIC = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.array([
    0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22,
    45, 39, 33, 30, 24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23,
    11, 46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6], np.int64)


@numba.njit(cache=True, inline="always")
def _lowest_bit(word):
    """Index of the lowest set bit of a non-zero uint64."""
    low = word & (~word + _ONE)
    return _DEBRUIJN_INDEX[(low * _DEBRUIJN_MAGIC) >> np.uint64(58)]


@numba.njit(cache=True, inline="always")
def _bits_add(lo, hi, v):
    w = v >> 6
    if lo[w] == 0:
        hi[w >> 6] |= _ONE << np.uint64(w & 63)
    lo[w] |= _ONE << np.uint64(v & 63)


@numba.njit(cache=True, inline="always")
def _bits_remove(lo, hi, v):
    w = v >> 6
    lo[w] &= ~(_ONE << np.uint64(v & 63))
    if lo[w] == 0:
        hi[w >> 6] &= ~(_ONE << np.uint64(w & 63))


@numba.njit(cache=True, inline="always")
def _bits_next(lo, hi, v):
    """Smallest member >= v, or -1."""
    w = v >> 6
    m = lo[w] & (_ALL << np.uint64(v & 63))
    if m != 0:
        return (w << 6) | _lowest_bit(m)
    # the next non-empty lo word after w
    w += 1
    h = w >> 6
    if h >= hi.shape[0]:
        return -1
    m = hi[h] & (_ALL << np.uint64(w & 63))
    while m == 0:
        h += 1
        if h == hi.shape[0]:
            return -1
        m = hi[h]
    w = (h << 6) | _lowest_bit(m)
    return (w << 6) | _lowest_bit(lo[w])


@numba.njit(cache=True)
def best_fit(slen, capacity, max_docs, window_bounds, out, ndocs):
    """Best fit over pieces sorted longest first (per window): each piece goes to the open
    bin with the least room that still holds it, else to a new bin. Writes the bin of each
    piece into out (P,) and the pieces per bin into ndocs (>= num_bins,). Returns
    (num_bins, first bin of each window (W+1,))."""
    # one LIFO stack of open bin ids per free value f: head[f] -> nxt[bin] -> ... -> -1;
    # the bitset holds f - 1 for every non-empty stack (f >= 1, so capacity values fit)
    head = np.full(capacity + 1, -1, np.int64)
    lo = np.zeros((capacity + 63) // 64, np.uint64)
    hi = np.zeros((lo.shape[0] + 63) // 64, np.uint64)
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
            f = _bits_next(lo, hi, length - 1) + 1
            if f == 0:
                if nbins == max_bins:
                    raise RuntimeError("seqpack internal error: best_fit ran out of bins")
                b = nbins
                nbins += 1
                free[b] = capacity
                ndocs[b] = 0
            else:
                b = head[f]
                head[f] = nxt[b]
                if head[f] < 0:
                    _bits_remove(lo, hi, f - 1)
            free[b] -= length
            ndocs[b] += 1
            out[k] = b
            # a full bin, or one at max_docs, is closed: it never goes back on a stack
            if free[b] > 0 and ndocs[b] < max_docs:
                f = free[b]
                if head[f] < 0:
                    _bits_add(lo, hi, f - 1)
                nxt[b] = head[f]
                head[f] = b
        # windows never share bins: take this window's open bins out of the structure
        for b in range(window_first_bin[w], nbins):
            if free[b] > 0 and ndocs[b] < max_docs:
                head[free[b]] = -1
                _bits_remove(lo, hi, free[b] - 1)
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
    and keep packing order inside it. start must be zero-filled."""
    for k in range(sdoc.shape[0]):
        b = sorted_bin[k]
        j = pos[b]
        pos[b] = j + 1
        doc[j] = sdoc[k]
        if sstart[k] != 0:  # start is zero-filled, see pieces_longest_first
            start[j] = sstart[k]
        stop[j] = sstart[k] + slen[k]
