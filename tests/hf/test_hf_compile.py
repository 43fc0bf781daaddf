"""torch.compile over a packed Hugging Face model: one graph, no break, no recompilation across steps,
and the same loss and gradients as the eager model.

On the CPU "seqpack" runs its dense SDPA backend inside the graph and "sdpa" is transformers' own
mask path; on a GPU with FlashAttention-4 "seqpack" calls FA4 through its custom op, which keeps
the graph whole in the same way (benchmarks/gpu_hf.py records the dynamo counters there).
"""

import copy

import pytest
import torch
import torch._dynamo

from seqpack.integrations import hf
from seqpack.integrations.hf_collator import packed_model_inputs

from hf_util import packed, tiny

pytestmark = pytest.mark.slow


def compile_model(model, how):
    if how == "whole":  # transformers.Trainer(torch_compile=True) does this
        return torch.compile(model, dynamic=False)
    for layer in model.model.layers:  # regional: each decoder layer, one graph shared by all
        layer.compile(dynamic=False)
    return model


def step(model, kwargs):
    out = model(**kwargs)
    out.loss.backward()
    model = getattr(model, "_orig_mod", model)  # torch.compile(model) wraps it
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return float(out.loss), grads


def call_for(form, batch):
    if form == "collator":
        return packed_model_inputs(batch)
    # LLaMA-Factory's integer mask: read by the (eager) hook, which rewrites the call.
    return dict(input_ids=batch.input_ids, labels=batch.labels, attention_mask=batch.boundaries.attention_mask())


# Each implementation meets each way of compiling and each input form once (compiles are slow).
@pytest.mark.parametrize("impl, how, form", [
    ("seqpack", "regional", "collator"), ("seqpack", "whole", "int_mask"),
    ("sdpa", "whole", "collator"), ("sdpa", "regional", "int_mask"),
])
def test_compiled_packed_model_has_one_graph_and_matches_eager(impl, how, form):
    if impl == "seqpack":
        pytest.importorskip("seqpack.attention")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = tiny("llama", impl)
    model = hf.enable_packing(copy.deepcopy(eager))
    compiled = compile_model(model, how)
    _, batch = packed("bsz3_padded")
    kwargs = call_for(form, batch)
    for _ in range(2):
        loss, grads = step(compiled, kwargs)
        ref_loss, ref_grads = step(eager, kwargs)
        assert abs(loss - ref_loss) <= 1e-5
        for name, g in ref_grads.items():
            assert float((grads[name] - g).norm() / g.norm().clamp_min(1e-12)) <= 1e-4, name
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"], dict(counters["recompiles"])


def test_fused_loss_inside_a_compiled_model():
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = tiny("llama", "sdpa")
    model = hf.enable_fused_loss(hf.enable_packing(copy.deepcopy(eager)))
    compiled = torch.compile(model, dynamic=False)
    _, batch = packed("bsz2_full")
    kwargs = packed_model_inputs(batch)
    loss, grads = step(compiled, kwargs)
    ref_loss, ref_grads = step(eager, kwargs)
    assert abs(loss - ref_loss) <= 1e-5
    for name, g in ref_grads.items():
        assert float((grads[name] - g).norm() / g.norm().clamp_min(1e-12)) <= 1e-4, name
    assert dict(counters["graph_break"]) == {}


@pytest.mark.parametrize("impl, how", [("seqpack", "regional"), ("sdpa", "whole")])
def test_static_collator_batches_never_recompile(impl, how):
    """fixed_length + max_num_docs: batches with different documents (packed into the same number
    of rows) keep every shape, so a dynamic=False graph serves them all."""
    if impl == "seqpack":
        pytest.importorskip("seqpack.attention")
    from seqpack.integrations.hf_collator import DataCollatorForPacking
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = tiny("llama", impl)
    compiled = compile_model(hf.enable_packing(copy.deepcopy(eager)), how)
    collator = DataCollatorForPacking(max_length=32, fixed_length=True, max_num_docs=12)
    g = torch.Generator().manual_seed(0)
    for lengths in ([5, 11, 3, 8, 6, 9, 4], [20, 7, 13, 2], [31, 1, 16, 9]):  # two rows each
        batch = collator([{"input_ids": torch.randint(3, 128, (n,), generator=g).tolist()} for n in lengths])
        loss, _ = step(compiled, batch)
        ref_loss, _ = step(eager, batch)
        assert abs(loss - ref_loss) <= 1e-5
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"], dict(counters["recompiles"])
