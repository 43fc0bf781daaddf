"""Two ranks on gloo (CPU): same number of batches, disjoint documents, balanced work."""

import datetime

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from data_util import sft_lengths

from seqpack.batch import Documents
from seqpack.data.online import PackedIterableDataset


def _rank_main(rank, world_size, init_file, docs_count):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        L = sft_lengths(docs_count, seed=21)
        docs = Documents(np.arange(int(L.sum()), dtype=np.int64) % 50000, np.concatenate([[0], np.cumsum(L)]))
        # rank and world size come from torch.distributed
        ds = PackedIterableDataset(docs, capacity=4096, batch_size=4, buffer_size=1024, max_seqlen=4096)
        assert (ds.rank, ds.world_size) == (rank, world_size)
        work, pieces = [], []
        for batch in ds:
            lens = torch.from_numpy(batch.doc_stop - batch.doc_start).double()
            mine = torch.stack([lens.sum(), (lens ** 2).sum()])
            both = [torch.zeros(2, dtype=torch.float64) for _ in range(world_size)]
            dist.all_gather(both, mine)  # a collective per step: hangs if counts differed
            work.append(torch.stack(both))
            pieces += list(zip(batch.doc_index.tolist(), batch.doc_start.tolist(), batch.doc_stop.tolist()))
        done = [None] * world_size
        dist.all_gather_object(done, (len(work), pieces))
        if rank == 0:
            counts = {n for n, _ in done}
            assert len(counts) == 1, f"ranks yielded different numbers of batches: {counts}"
            all_pieces = [p for _, ps in done for p in ps]
            assert len(all_pieces) == len(set(all_pieces))  # no piece on two ranks
            assert sum(e - s for _, s, e in all_pieces) == int(L.sum())  # and none lost
            w = torch.stack(work)  # (steps, ranks, 2)
            spread = (w.amax(1) - w.amin(1)) / w.mean(1)
            body = spread[:-3]
            assert body.max() <= 0.02, f"per-step spread (tokens, attention cost): {body.amax(0).tolist()}"
    finally:
        dist.destroy_process_group()


def test_two_ranks_on_gloo(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), 2000), nprocs=2, join=True)
