"""seqpack verify: reports per implementation, exits 0 when documents stay apart and 1 on a leak."""

import json

import pytest

from seqpack import cli
from seqpack.integrations import hf, hf_verify


def test_verify_passes_and_shows_what_transformers_does_alone(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["verify", "llama", "--attn", "eager,sdpa", "--forms", "int_mask,position_ids",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "OK: packed and one-by-one agree on 2" in text
    rows = json.loads(out.read_text())
    assert {(r["attn_implementation"], r["form"]) for r in rows if r["seqpack"]} == {
        (a, f) for a in ("eager", "sdpa") for f in ("int_mask", "position_ids")}
    assert all(r["logits"] <= 1e-4 and r["grads"] <= 1e-4 for r in rows if r["seqpack"])
    # Without seqpack both forms leak on transformers 5.x (integer mask cast to bool; cache on by default).
    assert all(r["logits"] > 1e-2 for r in rows if not r["seqpack"])


def test_verify_exits_nonzero_on_a_leak(monkeypatch, capsys):
    monkeypatch.setattr(hf, "enable_packing", lambda model, **kw: model)  # a "fix" that does nothing
    assert cli.main(["verify", "qwen2", "--attn", "sdpa", "--forms", "position_ids", "--no-baseline"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["dir", "config_json"])
def test_verify_takes_a_local_model_or_config(kind, tmp_path):
    model = hf_verify.load_model("mistral")
    if kind == "dir":
        model.save_pretrained(tmp_path)  # weights and config: loaded with from_pretrained
        spec = str(tmp_path)
    else:
        model.config.to_json_file(tmp_path / "config.json")
        spec = str(tmp_path / "config.json")
    results = hf_verify.verify(spec, attn_implementations=["sdpa"], forms=["collator"], baseline=False,
                               log=lambda *_: None)
    assert len(results) == 1 and not results[0].leak and not results[0].error
