"""Packed rows compute exactly what the documents compute one by one, on every family and path.

use_cache is left at its default in every packed call (the collator form passes
use_cache=False itself, as DataCollatorForPacking does).
"""

import pytest
import torch

from seqpack.integrations.hf_verify import FORMS, compare_packed

from hf_util import FAMILIES, LAYOUTS, packed, tiny

TOL = 1e-4
# Each layout is handed over in a different form, so every family meets every form.
FORM_OF_LAYOUT = {"bsz1": "position_ids", "bsz1_padded": "packed_batch", "bsz2_full": "collator",
                  "bsz3_padded": "int_mask"}


def assert_same(r, backward=True):
    assert r["logits"] <= TOL, r
    if backward:
        assert r["grads"] <= TOL, r
        assert r["loss"] <= 1e-5, r


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_families(family, impl, layout):
    docs, batch = packed(layout)
    assert_same(compare_packed(tiny(family, impl), docs, batch, form=FORM_OF_LAYOUT[layout]))


@pytest.mark.parametrize("layout", ["bsz1", "bsz3_padded"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("form", FORMS)
def test_forms(form, impl, layout):
    docs, batch = packed(layout)
    assert_same(compare_packed(tiny("llama", impl), docs, batch, form=form))


@pytest.mark.parametrize("family", FAMILIES)
def test_seqpack_attention(family):
    pytest.importorskip("seqpack.attention")
    docs, batch = packed("bsz3_padded")
    assert_same(compare_packed(tiny(family, "seqpack"), docs, batch, form="collator"))


@pytest.mark.parametrize("family", FAMILIES)
def test_flex_forward(family):
    # torch has no flex_attention backward on CPU; the reference runs on eager (torch's CPU
    # flex kernel recompiles for every new document length).
    docs, batch = packed("bsz3_padded")
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        r = compare_packed(tiny(family, "flex_attention", grad=False), docs, batch, form="int_mask",
                           backward=False, reference_attn="eager")
    assert_same(r, backward=False)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_without_seqpack_documents_leak(impl):
    """The control: the same packed call on the bare model mixes documents (so the checks can see it)."""
    docs, batch = packed("bsz3_padded")
    for form in ("int_mask", "position_ids"):
        assert compare_packed(tiny("llama", impl, packing=False), docs, batch, form=form)["logits"] > 1e-2


@pytest.mark.parametrize("impl", ["sdpa", "seqpack"])
def test_gradient_checkpointing(impl):
    if impl == "seqpack":
        pytest.importorskip("seqpack.attention")
    model = tiny("llama", impl)
    model.gradient_checkpointing_enable()
    model.train()
    docs, batch = packed("bsz3_padded")
    for form in ("collator", "int_mask"):
        assert_same(compare_packed(model, docs, batch, form=form))
