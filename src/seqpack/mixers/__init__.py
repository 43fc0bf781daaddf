"""Token mixers outside attention that keep packed documents apart.

Recurrent and convolutional layers (short causal convolutions, Mamba/SSD scans, gated
DeltaNet, linear and lightning attention, RG-LRU) carry state from token to token. In a
packed row that state would flow from one document into the next; these functions take
the documents of the row and restart every document from zero state, so each output
equals the output of its document run alone.

Notable:
- Documents arrive as ``seq_idx``: an integer ``(B, L)`` tensor, the same value for every
  token of one document and different values for adjacent documents (padding runs are
  segments of their own). ``DocBoundaries.doc_ids()`` is exactly that; ``seq_idx=None``
  means one document per row.
- Plain torch, no transformers: these are the core math, the Hugging Face wiring lives in
  ``seqpack.integrations.hf_hybrid``.
- The chunked scans mask their decays at document boundaries instead of padding each
  document to a chunk: no token is added, and the result is exact, not approximate.
- On CUDA, where installed, the fast kernels that take boundaries are used
  (flash-linear-attention's ``chunk_gated_delta_rule`` with ``cu_seqlens``,
  ``causal_conv1d_fn`` and ``mamba_chunk_scan_combined`` with ``seq_idx``); the torch path
  is the reference they are tested against.
"""

from seqpack.mixers._segments import segment_positions, segment_starts
from seqpack.mixers.conv import causal_conv1d
from seqpack.mixers.delta import chunk_gated_delta_rule, gated_delta_rule_recurrent
from seqpack.mixers.scan import rg_lru, selective_scan
from seqpack.mixers.ssd import chunk_linear_attention, ssd_scan

__all__ = ["causal_conv1d", "chunk_gated_delta_rule", "gated_delta_rule_recurrent", "chunk_linear_attention", "ssd_scan",
           "selective_scan", "rg_lru", "segment_starts", "segment_positions"]
