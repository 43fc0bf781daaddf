"""Helpers shared by the data tests (imported by name: `conftest` is ambiguous across test folders)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def sft_lengths(n, seed=0, median=400, sigma=0.86, max_len=8192):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), sigma, n), 1, max_len).astype(np.int64)


def token_docs(lengths, seed=1, vocab=50000):
    """One list of random token ids per length (document i starts with a marker of i)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(n)).astype(np.int64) for n in lengths]


def write_parquet(path, docs, labels=None, rows_per_group=None, extra=None):
    cols = {"input_ids": pa.array([np.asarray(d, np.int32) for d in docs], pa.list_(pa.int32()))}
    if labels is not None:
        cols["labels"] = pa.array([np.asarray(x, np.int32) for x in labels], pa.list_(pa.int32()))
    cols.update(extra or {})
    pq.write_table(pa.table(cols), path, row_group_size=rows_per_group)
    return path
