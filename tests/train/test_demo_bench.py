"""`seqpack demo` end to end at a tiny size, and `seqpack bench train --tiny` on the CPU."""

import json

from seqpack import cli


def test_demo_runs_end_to_end(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--steps", "3", "--max-docs", "150", "--capacity", "512",
            "--train-capacity", "128", "--rows-per-step", "2", "--vocab", "256", "--progress", "0", "--threads", "1"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "packed bfd" in text and "equivalence at step 0" in text and "FAILED" not in text
    for mode in ("padded", "naive", "packed"):
        assert f"\n{mode} " in text
    for name in ("packing.png", "loss.png", "throughput.png"):
        assert (tmp_path / name).stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"padded", "naive", "packed"}
    assert results["packed"]["fill"] > results["padded"]["fill"]
    assert len(results["packed"]["history"]) == 3


def test_bench_train_tiny_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "train", "--tiny", "--device", "cpu", "--capacity", "128", "--rows", "2", "--steps", "1",
            "--warmup", "1", "--dists", "short", "--compare-loss-chunk", "64", "--json", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "MFU = (6 x params x useful tokens" in text and "profile:" in text
    res = json.loads(out.read_text())
    rows = res["results"]["short"]
    for label in ("packed auto", "naive", "padded", "packed sdpa_dense"):
        assert rows[label]["tok_s"] > 0, rows[label]
    assert rows["padded"]["fill"] < rows["packed auto"]["fill"]
    assert "vs_padded" in res["verdict"]["short"] and res["profile"]["categories_ms"]
