"""The sweep: every causal-LM family of the installed transformers, every implementation and entry point,
is exact or refused as families.REFUSED says (see families.py). Marked ``families``: the quick suite
deselects it with ``-m "not families"``; CI runs it on the oldest and the newest transformers."""

import pytest
import torch

import families
from seqpack.integrations import hf

pytestmark = pytest.mark.families


@pytest.fixture(autouse=True)
def no_runtime_check(monkeypatch):
    """Cells are measured with the probe off (it would turn a leak into a refusal); `families` re-runs it
    on each leak to report whether it would have caught it."""
    monkeypatch.setenv("SEQPACK_CHECK", "0")


@pytest.mark.parametrize("family", families.families())
def test_family(family):
    result = families.run_family(family)
    problems = families.problems(result)
    assert not problems, "\n".join(problems)


def test_the_sweep_sees_a_leak_and_the_probe_catches_it(monkeypatch):
    """With a "fix" that finds the documents and drops them, the integer-mask cells of llama leak, the
    sweep says so, and the runtime probe (run by the sweep on every leak) catches each one."""
    monkeypatch.setattr(hf, "_apply_boundaries", lambda kwargs, b, route: kwargs.update(attention_mask=None))
    result = families.run_family("llama", impls=("sdpa", "seqpack"))
    leaks = {k: c for k, c in result.cells.items() if c.status == "LEAK"}
    assert {e for _, e in leaks} == {"configure+int_mask", "enable+int_mask"}, result.cells
    assert all(c.caught and c.diff > 1e-2 for c in leaks.values())
    assert families.problems(result)


def test_lists_name_real_families():
    import transformers
    from transformers import CONFIG_MAPPING
    if transformers.__version__.split(".")[:2] != ["5", "25"]:
        pytest.skip("the lists are written against transformers 5.25; older versions lack some families")
    named = set(families.REFUSED) | set(families.NOT_BUILT) | {f for f, _ in families.REFUSED_CELLS}
    assert named <= set(CONFIG_MAPPING), named - set(CONFIG_MAPPING)
