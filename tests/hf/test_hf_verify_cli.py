"""`seqpack verify` on a model spec that is neither a path nor a model family: one line, exit 2."""

import pytest

pytest.importorskip("transformers")

from seqpack.cli import main  # noqa: E402


@pytest.mark.parametrize("spec, needles", [
    ("/no/such/path", ["'/no/such/path' does not exist", "config.json"]),
    ("./missing/config.json", ["does not exist"]),
    ("lama", ["'lama' is neither a path nor a transformers model family", "did you mean llama"]),
])
def test_verify_refuses_unknown_spec_in_one_line(capsys, spec, needles):
    assert main(["verify", spec, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqpack verify: error: ") and len(err) < 300, err
    for n in needles:
        assert n in lines[0]
