"""Context parallelism (CP): one packed step's token buffer split over ranks, attention exact.

Notable:
- Ulysses (DeepSpeed's scheme). The step's 1D buffer of T tokens is cut into ``cp`` equal
  contiguous shards, one per rank; documents may span shards. Everything but attention works
  token by token, so it runs on the shard as it is. Attention all-to-alls q, k, v from
  sequence shards ``(T/cp, H, D)`` to head shards ``(T, H/cp, D)``, calls `varlen_attention`
  over the whole buffer with the batch's *global* `DocBoundaries`, and all-to-alls the output
  back. Exact by construction (a head sees every token of its documents, sliding windows
  included), balanced by construction (every rank runs attention over all T tokens for H/cp
  heads, whatever the document lengths), and any backend works (FlashAttention, varlen_attn,
  flex, sdpa, eager).
- q, k and v travel in one all-to-all (concatenated per destination rank), the output in a
  second: two collectives per layer forward, two in the backward.
- The collectives are PyTorch's functional collectives (``all_to_all_single_autograd``):
  autograd runs the reverse all-to-all in the backward, and ``torch.compile(fullgraph=True)``
  traces them into the graph.
- GQA: key/value heads are split like query heads when their number is a multiple of cp;
  otherwise each is repeated ``cp / gcd(Hkv, cp)`` times first (the backward sums the copies),
  so every rank receives exactly the key/value heads its query heads read.
- Refused (`InputError`, naming the numbers): query heads not divisible by cp, and cp larger
  than the number of heads. Ulysses gives each rank whole heads; more ranks than heads would
  need ring attention (key/value blocks passed around the ranks), which seqpack does not
  write itself.
- The loss of a step is a sum over each rank's tokens divided by the label tokens of all
  ranks (`token_mean_loss`); gradients are then summed over all ranks (DDP/FSDP over the
  whole dp x cp world, or `all_reduce_grads`). So a packed step's gradient is the same for
  any cp and dp as in one process.
- The mesh is ``(dp, cp)`` with cp innermost: a cp group is consecutive ranks (one node,
  NVLink). Data is split by dp only: the ranks of one cp group read the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seqpack.attention import varlen_attention
from seqpack.attention.base import AttentionContext
from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX, check_label_shift, to_next_token

__all__ = ["init_mesh", "ContextParallel", "CPContext", "ContextShard", "ulysses_attention", "attention_for",
           "token_mean_loss", "all_reduce_grads"]


# ----------------------------------------------------------------------------------------
# small pure helpers


def check_heads(num_heads: int, num_kv_heads: int, cp: int) -> None:
    """Raise `InputError` unless Ulysses can split these heads over ``cp`` ranks."""
    if cp > num_heads:
        raise InputError(f"context parallel size {cp} is larger than the {num_heads} attention heads: Ulysses gives "
                         f"each rank whole heads, and more ranks than heads would need ring attention, which seqpack "
                         f"does not provide; use cp <= {num_heads} (and data parallelism for the other ranks)")
    if num_heads % cp:
        raise InputError(f"{num_heads} attention heads cannot be split evenly over context parallel size {cp}: "
                         f"pick a cp that divides {num_heads}")
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise InputError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads (GQA needs a divisor)")


def kv_repeats(num_kv_heads: int, cp: int) -> int:
    """How often each key/value head is copied so that cp divides their number."""
    return cp // math.gcd(num_kv_heads, cp)


def _to_heads(x: torch.Tensor, cp: int) -> torch.Tensor:
    """``(T/cp, h, D) -> (cp, T/cp, h/cp, D)``: chunk j (heads j*h/cp ..) goes to rank j."""
    n, h, d = x.shape
    return x.reshape(n, cp, h // cp, d).transpose(0, 1)


# ----------------------------------------------------------------------------------------


def init_mesh(cp: int, *, device_type: str | None = None):
    """A ``(dp, cp)`` DeviceMesh over every rank (``dp = world / cp``); dims named "dp", "cp".

    Joins the default process group first if needed: torchrun's (NCCL on CUDA, gloo on CPU),
    or outside torchrun a one-process group, so the same script runs alone with ``cp=1``.
    """
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    if cp < 1 or world % cp:
        raise InputError(f"context parallel size {cp} does not divide the {world} ranks: pick a cp that divides "
                         f"the number of processes (the rest is data parallel)")
    return init_device_mesh(device_type, (world // cp, cp), mesh_dim_names=("dp", "cp"))


class ContextParallel:
    """The cp dimension of a mesh: shards packed batches and runs attention across its ranks.

    Args:
        mesh: a DeviceMesh with a ``"cp"`` dimension (`init_mesh`), or None for one rank
            (``cp == 1``: shards are the whole batch and attention is `varlen_attention`).
        group: a process group to use instead of a mesh.
    """

    def __init__(self, mesh=None, *, group=None):
        if mesh is not None and group is not None:
            raise ValueError("pass a mesh or a process group, not both")
        if mesh is not None:
            group = mesh["cp"].get_group() if mesh.mesh_dim_names and "cp" in mesh.mesh_dim_names else mesh.get_group()
        self.group = group
        if group is None:
            self.size, self.rank = 1, 0
        else:
            import torch.distributed as dist

            self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def __repr__(self) -> str:
        return f"ContextParallel(size={self.size}, rank={self.rank})"

    def check_heads(self, num_heads: int, num_kv_heads: int | None = None) -> None:
        """Raise `InputError` unless attention with these heads can run over this cp group."""
        check_heads(num_heads, num_heads if num_kv_heads is None else num_kv_heads, self.size)

    def context(self, boundaries) -> "CPContext":
        """The attention context of a sharded batch: its global boundaries (or a context from
        `seqpack.attention.prepare` over them, shared by all layers) plus this group."""
        ctx = boundaries if isinstance(boundaries, AttentionContext) else AttentionContext(boundaries)
        if ctx.boundaries.layout != "1d":
            ctx = AttentionContext(ctx.boundaries.flatten(), mean_seqlen=ctx.mean_seqlen)  # masks were for rows
        if ctx.boundaries.numel % self.size:
            raise InputError(f"the batch has {ctx.boundaries.numel} tokens, not a multiple of context parallel "
                             f"size {self.size}: shard it with ContextParallel.shard, which pads")
        return CPContext(ctx, self)

    def shard(self, input_ids: torch.Tensor, labels: torch.Tensor | None, position_ids: torch.Tensor | None,
              boundaries: DocBoundaries | None, *, label_shift: str = "collator", pad_token_id: int = 0,
              pad: bool = True) -> "ContextShard":
        """This rank's contiguous shard of a packed batch (rows are flattened into one buffer).

        Args:
            input_ids, labels, position_ids: ``(T,)`` or ``(B, L)``; position_ids None: derived
                from the boundaries (restarting per document).
            boundaries: the batch's `DocBoundaries`; None = one causal segment per row.
            label_shift: ``"collator"`` (labels are next-token targets, as `seqpack.model.GPT`
                takes them) or ``"model"`` (aligned with inputs, Hugging Face): shifted here over
                the whole buffer, so a shard's last token keeps its target on the next shard.
            pad: when the token count is not a multiple of cp, append a padding segment
                (``pad_token_id``, label -100) to make it one; False raises `InputError`.

        The returned labels are always next-token targets (``label_shift="collator"`` for
        `seqpack.loss.packed_cross_entropy`).
        """
        cp = self.size
        if boundaries is None:
            boundaries = DocBoundaries.causal_rows(tuple(input_ids.shape), input_ids.device)
        if tuple(input_ids.shape) != tuple(boundaries.shape):
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and boundaries {boundaries.shape} disagree")
        b = boundaries.flatten() if boundaries.layout == "rows" else boundaries
        if position_ids is None:
            position_ids = b.position_ids()
        ids, pos = input_ids.reshape(-1), position_ids.reshape(-1)
        if labels is not None:
            if check_label_shift(label_shift) == "model":
                labels = to_next_token(labels)
            labels = labels.reshape(-1)
        T = ids.numel()
        extra = -T % cp
        if extra:
            if not pad:
                raise InputError(f"the batch has {T} tokens, not a multiple of context parallel size {cp}: pad it "
                                 f"by {extra} tokens (or shard with pad=True)")
            b = _append_padding(b, extra)
            ids = torch.cat([ids, ids.new_full((extra,), pad_token_id)])
            pos = torch.cat([pos, torch.arange(extra, dtype=pos.dtype, device=pos.device)])
            if labels is not None:
                labels = torch.cat([labels, labels.new_full((extra,), IGNORE_INDEX)])
        n = (T + extra) // cp
        sl = slice(self.rank * n, (self.rank + 1) * n)
        return ContextShard(ids[sl], None if labels is None else labels[sl], pos[sl], b, self)

    def shard_batch(self, batch, *, pad_token_id: int = 0) -> "ContextShard":
        """`shard` for a seqpack `PackedBatch` (either label convention)."""
        return self.shard(batch.input_ids, batch.labels, batch.position_ids, batch.boundaries,
                          label_shift=batch.label_shift, pad_token_id=pad_token_id)


def _append_padding(b: DocBoundaries, n: int) -> DocBoundaries:
    """``b`` with ``n`` padding tokens at the end, as a padding segment of their own.

    A statically padded ``cu_seqlens`` keeps its size: its last zero-length filler segment
    becomes the padding segment, so a compiled model sees the same shapes.
    """
    cu, is_pad = b.cu_seqlens, b.is_pad
    total = cu[-1:] + n
    filler = cu.numel() > 1 and bool(is_pad[-1]) and int(cu[-1]) == int(cu[-2])
    if filler:
        cu = torch.cat([cu[:-1], total])
    else:
        cu = torch.cat([cu, total])
        is_pad = torch.cat([is_pad, is_pad.new_ones(1)])
    return DocBoundaries(cu, (b.numel + n,), is_pad=is_pad, max_seqlen=max(b.max_seqlen, n), validate=False)


@dataclass
class CPContext:
    """What a model's attention layers get under context parallelism, in place of boundaries.

    ``attention``: the `AttentionContext` over the whole (global) buffer; ``cp``: the group.
    `attention_for` picks `ulysses_attention` for it.
    """

    attention: AttentionContext
    cp: ContextParallel

    @property
    def numel(self) -> int:
        """Tokens of the whole buffer (all shards)."""
        return self.attention.boundaries.numel

    @property
    def offset(self) -> int:
        """Index of this rank's first token in the whole buffer."""
        return self.cp.rank * (self.numel // self.cp.size)


@dataclass
class ContextShard:
    """One rank's share of a packed batch: ``input_ids``, ``labels`` (next-token targets, or
    None), ``position_ids`` (per document, from the whole buffer), each ``(T / cp,)``; the
    whole buffer's ``boundaries`` (padded to a multiple of cp); and the ``cp`` group."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor
    boundaries: DocBoundaries
    cp: ContextParallel

    def context(self, prepared: AttentionContext | None = None) -> CPContext:
        """The attention context to hand the model (``prepared``: from `seqpack.attention.prepare`
        over ``self.boundaries``, e.g. `seqpack.model.gpt.prepare_context`)."""
        return self.cp.context(self.boundaries if prepared is None else prepared)


# ----------------------------------------------------------------------------------------
# attention


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CPContext, *, causal: bool = True,
                      window: int | None = None, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """`varlen_attention` for one shard of a context-parallel batch (same arguments and result).

    q ``(T/cp, H, D)`` (or ``(1, T/cp, H, D)``), k/v with ``Hkv`` heads: this rank's tokens.
    All-to-all to ``(T, H/cp, D)``, block-diagonal attention over the whole buffer with the
    global boundaries of ``ctx``, all-to-all back. Every rank of the group must call it
    with the same shapes (as every layer of a model does).
    """
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    cp = ctx.cp.size
    rows = q.dim() == 4
    if rows:
        if q.shape[0] != 1:
            raise ValueError(f"context parallel attention takes one row of tokens; got q {tuple(q.shape)}")
        q, k, v = q[0], k[0], v[0]
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [T, H, D] shards; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    n, H, D = q.shape
    Hkv = k.shape[1]
    if n * cp != ctx.numel:
        raise ValueError(f"this shard has {n} tokens; {cp} shards make {n * cp} but the boundaries cover "
                         f"{ctx.numel}: shard the batch with ContextParallel.shard")
    check_heads(H, Hkv, cp)
    if cp == 1:
        out = varlen_attention(q, k, v, ctx.attention, causal=causal, window=window, scale=scale, backend=backend)
        return out[None] if rows else out
    rep = kv_repeats(Hkv, cp)
    if rep > 1:  # each rank needs the kv heads of its query heads: copy them (backward sums)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    hq, hkv = H // cp, k.shape[1] // cp
    # (cp, T/cp, hq + 2 hkv, D): rank j's query, key and value heads side by side
    send = torch.cat([_to_heads(q, cp), _to_heads(k, cp), _to_heads(v, cp)], dim=2).contiguous()
    recv = all_to_all_single_autograd(send, None, None, ctx.cp.group)  # chunk j: rank j's tokens, my heads
    recv = recv.reshape(cp * n, hq + 2 * hkv, D)
    # contiguous, as the model's own q, k, v are (kernels may assume it)
    qh, kh, vh = (x.contiguous() for x in recv.split([hq, hkv, hkv], dim=1))
    out = varlen_attention(qh, kh, vh, ctx.attention, causal=causal, window=window, scale=scale, backend=backend)
    back = all_to_all_single_autograd(out.reshape(cp, n, hq, D).contiguous(), None, None, ctx.cp.group)
    out = back.transpose(0, 1).reshape(n, H, D)  # (T/cp, cp, hq, D): my tokens, every rank's heads
    return out[None] if rows else out


def attention_for(ctx):
    """The attention function for a context: `ulysses_attention` for a `CPContext`, else
    `varlen_attention` (both take ``(q, k, v, ctx, causal=, window=, scale=, backend=)``)."""
    return ulysses_attention if isinstance(ctx, CPContext) else varlen_attention


# ----------------------------------------------------------------------------------------
# loss and gradients


def token_mean_loss(loss_sum: torch.Tensor, count: torch.Tensor, group=None) -> torch.Tensor:
    """This rank's share of the step's token-mean loss: its loss sum divided by the label
    tokens of every rank of ``group`` (default: all ranks, cp and dp).

    Summing the gradients of these shares over the same ranks (`all_reduce_grads`, or DDP /
    FSDP with the loss multiplied by the world size, as they average) gives the gradient of
    the one-process token mean.
    """
    import torch.distributed as dist

    total = count.detach().to(torch.float32).clone()
    if dist.is_initialized():
        dist.all_reduce(total, group=group)
    return loss_sum / total.clamp(min=1)


def all_reduce_grads(module: torch.nn.Module, group=None) -> None:
    """Sum every parameter's gradient over ``group`` (default: all ranks), in place."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
