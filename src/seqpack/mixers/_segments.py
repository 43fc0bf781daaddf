"""Small helpers on ``seq_idx`` (B, L): where segments start, positions inside them, padding to chunks."""

from __future__ import annotations

import torch


def segment_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """bool ``(B, L)``: True where a token starts a segment (the first token of each row too)."""
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def segment_positions(seq_idx: torch.Tensor) -> torch.Tensor:
    """int64 ``(B, L)``: position of every token inside its segment (0 at each start)."""
    L = seq_idx.shape[-1]
    t = torch.arange(L, device=seq_idx.device).expand_as(seq_idx)
    last_start = torch.where(segment_starts(seq_idx), t, torch.zeros_like(t)).cummax(dim=-1).values
    return t - last_start


def one_segment_per_row(B: int, L: int, device) -> torch.Tensor:
    """``seq_idx`` of a batch without packing: row b is segment b."""
    return torch.arange(B, device=device)[:, None].expand(B, L)


def pad_to_chunks(seq_idx: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``seq_idx`` padded on the right to a multiple of ``chunk_size``; the filler is a segment of its own."""
    pad = (-seq_idx.shape[-1]) % chunk_size
    if not pad:
        return seq_idx
    filler = seq_idx.new_full((seq_idx.shape[0], pad), -1)  # every real id is >= 0
    return torch.cat([seq_idx, filler], dim=-1)


def chunk_masks(seg: torch.Tensor):
    """Masks of a chunked scan from chunked segment ids ``seg`` ``(B, N, C)``.

    Returns ``(same, from_prev, to_end, carry)``:
    - ``same`` bool ``(B, N, C, C)``: tokens i and j of a chunk are in one segment;
    - ``from_prev`` bool ``(B, N, C)``: token t continues the segment of the token before the
      chunk, so the state carried into the chunk reaches it;
    - ``to_end`` bool ``(B, N, C)``: token t is in the chunk's last segment, so it writes the
      state carried out of the chunk;
    - ``carry`` bool ``(B, N)``: the whole chunk continues the incoming segment, so the
      incoming state survives to the end of the chunk.
    The state carried into chunk 0 is the caller's initial state, for the row's first segment.
    """
    same = seg[..., :, None] == seg[..., None, :]
    prev = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)  # (B, N): segment before each chunk
    from_prev = seg == prev[..., None]
    to_end = seg == seg[..., -1:]
    carry = seg[..., -1] == prev
    return same, from_prev, to_end, carry
