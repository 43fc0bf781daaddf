"""The equivalence check: a packed step equals the same documents run one by one.

Runs one packed batch forward and backward, then every document piece of it alone, and
compares the summed losses and the summed gradients; runs the same rows with plain
causal attention (naive packing) to show what a leak looks like. The model's real init
zeroes every output projection, so each block starts as the identity and attention
could leak without changing anything: the check therefore randomises a copy of the
weights first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from seqpack.batch import collate_packed
from seqpack.boundaries import DocBoundaries

__all__ = ["Equivalence", "check_equivalence"]


@dataclass
class Equivalence:
    docs: int
    tokens: int
    loss_packed: float
    loss_one_by_one: float
    loss_naive: float
    grad_rel_err: float          # max over parameter tensors of |g_packed - g_sum| / |g_sum|
    tensors: int

    @property
    def loss_rel_err(self) -> float:
        return abs(self.loss_packed - self.loss_one_by_one) / max(abs(self.loss_one_by_one), 1e-30)

    @property
    def naive_rel_err(self) -> float:
        return abs(self.loss_naive - self.loss_one_by_one) / max(abs(self.loss_one_by_one), 1e-30)

    def ok(self, tol: float = 1e-5) -> bool:
        return self.loss_rel_err <= tol and self.grad_rel_err <= tol

    def report(self, tol: float = 1e-5) -> str:
        mark = lambda good: "ok" if good else "FAILED"  # noqa: E731
        return "\n".join([
            f"equivalence at step 0 ({self.docs} documents, {self.tokens:,} tokens, fp32, weights randomised):",
            f"  loss      packed {self.loss_packed:.6f}  one by one {self.loss_one_by_one:.6f}  "
            f"rel diff {self.loss_rel_err:.1e}  {mark(self.loss_rel_err <= tol)}",
            f"  gradients max rel diff over {self.tensors} tensors {self.grad_rel_err:.1e}  "
            f"{mark(self.grad_rel_err <= tol)}",
            f"  naive packing (cross-document attention) loss {self.loss_naive:.6f}: rel diff "
            f"{self.naive_rel_err:.1e}, the leak the block-diagonal mask removes",
        ])


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def check_equivalence(model, plan, docs, bins, *, seed: int = 0, std: float = 0.3) -> Equivalence:
    """Packed vs one-by-one (and naive) for the documents of ``bins`` of ``plan``.

    ``model`` is copied (float32, CPU) and its weights set to N(0, std); the original is untouched.
    """
    from seqpack.model.gpt import prepare_context

    m = copy.deepcopy(model).float().cpu()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    batch = collate_packed(plan, docs, bins, layout="1d", label_shift="collator")
    b = batch.boundaries

    m.zero_grad()
    loss_p, _ = m(batch.input_ids, batch.labels, boundaries=prepare_context(b, m.config, block_mask=False),
                  position_ids=batch.position_ids)
    loss_p.backward()
    g_packed = _grads(m)

    m.zero_grad()
    loss_1 = 0.0
    cu = b.cu_seqlens.tolist()
    pieces = [(cu[i], cu[i + 1]) for i in range(len(cu) - 1) if not bool(b.is_pad[i]) and cu[i + 1] > cu[i]]
    for s, e in pieces:
        loss, _ = m(batch.input_ids[s:e], batch.labels[s:e], boundaries=DocBoundaries.from_lengths([e - s]))
        loss.backward()  # accumulates: the sum of the one-document steps
        loss_1 += float(loss.detach())
    g_one = _grads(m)

    rows = collate_packed(plan, docs, bins, layout="rows", label_shift="collator")
    # No boundaries: causal over each whole row. (With grad on, as above, so auto picks the
    # same CPU backend: a forward-only CPU call may pick flex, which compiles itself.)
    loss_n, _ = m(rows.input_ids, rows.labels)
    rel = max(float((g_packed[k] - g_one[k]).norm() / g_one[k].norm().clamp_min(1e-30)) for k in g_one)
    return Equivalence(docs=len(pieces), tokens=b.num_tokens(), loss_packed=float(loss_p.detach()),
                       loss_one_by_one=loss_1, loss_naive=float(loss_n.detach()), grad_rel_err=rel, tensors=len(g_one))
