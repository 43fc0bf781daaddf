"""backend="auto": it follows the calibration table, and the tables are found where documented."""

import dataclasses
import json
import subprocess
import sys
from importlib import resources

import pytest
import torch

from seqpack import cli
from seqpack.attention import BACKENDS, Backend, choose_backend, prepare, register_backend
from seqpack.attention import api, select
from seqpack.attention.select import FALLBACK_ORDER, rank_backends
from seqpack.boundaries import DocBoundaries

CPU = torch.device("cpu")


def table(*entries, device="cpu"):
    return {"schema": select.SCHEMA, "device": device, "device_match": device, "torch": torch.__version__,
            "entries": list(entries)}


def entry(mean, ms, layout="1d", mode="fwd_bwd"):
    return {"mean_seqlen": mean, "ms": ms, "layout": layout, "mode": mode}


@pytest.fixture
def cpu_table(monkeypatch):
    """Install a table for the CPU for the duration of a test."""
    def install(t):
        monkeypatch.setitem(select._USER, "cpu", t)
    return install


def rank(names, feature, layout="1d", grad=True):
    return rank_backends(names, device=CPU, feature=feature, layout=layout, requires_grad=grad)


def test_rank_follows_the_table_and_interpolates_between_grid_points(cpu_table):
    cpu_table(table(entry(50, {"a": 1.0, "b": 2.0}), entry(500, {"a": 4.0, "b": 2.0})))
    assert rank(["a", "b"], 50) == ["a", "b"]
    assert rank(["a", "b"], 500) == ["b", "a"]
    assert rank(["a", "b"], 5) == ["a", "b"]        # below the grid: the nearest point
    assert rank(["a", "b"], 5000) == ["b", "a"]     # above it
    # log-log: a costs 4 ** t at feature 50 * 10 ** t
    assert rank(["a", "b"], 100) == ["a", "b"]      # a ~1.52 ms
    assert rank(["a", "b"], 300) == ["b", "a"]      # a ~2.94 ms


def test_rank_uses_the_mode_and_layout_of_the_call(cpu_table):
    cpu_table(table(entry(100, {"a": 1.0, "b": 2.0}, mode="fwd"), entry(100, {"a": 3.0, "b": 2.0}, mode="fwd_bwd"),
                    entry(100, {"a": 9.0, "b": 2.0}, layout="rows", mode="fwd")))
    assert rank(["a", "b"], 100, grad=False) == ["a", "b"]
    assert rank(["a", "b"], 100, grad=True) == ["b", "a"]
    assert rank(["a", "b"], 100, layout="rows", grad=False) == ["b", "a"]
    assert rank(["a", "b"], 100, layout="rows", grad=True) == ["b", "a"]  # no rows fwd_bwd: any layout


def test_unmeasured_backends_come_after_measured_ones_in_fallback_order(cpu_table):
    cpu_table(table(entry(100, {"sdpa_dense": 5.0})))
    assert rank(["eager", "flex", "sdpa_dense"], 100) == ["sdpa_dense", "flex", "eager"]


def test_without_a_table_the_fallback_order_applies():
    names = ["eager", "sdpa_dense", "flex", "flash_attn.cute", "torch_varlen"]
    assert rank_backends(names, device=torch.device("meta"), feature=100, layout="1d",
                         requires_grad=True) == [n for n in FALLBACK_ORDER if n in names]


def test_user_cache_table_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQPACK_CACHE", str(tmp_path))
    path = select.table_path("Some GPU 9000")
    assert path.parent == tmp_path and "some-gpu-9000" in path.name
    path.write_text(json.dumps(table(entry(100, {"x": 1.0}), device="Some GPU 9000")))
    try:
        select.load_tables()
        assert select.table_for("Some GPU 9000")["entries"][0]["ms"] == {"x": 1.0}
    finally:
        monkeypatch.delenv("SEQPACK_CACHE")
        select.load_tables()
    assert select.table_for("Some GPU 9000") is None


def test_shipped_tables_are_valid_and_cpu_has_one():
    files = [f for f in resources.files("seqpack").joinpath("calibration").iterdir() if f.name.endswith(".json")]
    assert any(f.name == "cpu.json" for f in files)
    for f in files:
        t = json.loads(f.read_text())
        assert t["schema"] == select.SCHEMA and t["device_match"] and t["entries"]
        for e in t["entries"]:
            assert e["mean_seqlen"] > 0 and e["mode"] in ("fwd", "fwd_bwd") and e["layout"] in ("rows", "1d")
            assert all(ms > 0 for ms in e["ms"].values())
    assert select.table_for("cpu") is not None


def test_auto_follows_the_table(cpu_table, monkeypatch):
    monkeypatch.setattr(select, "PAYBACK_CALLS", {})  # flex's compile cost aside (tested below)
    b = DocBoundaries.from_lengths([30, 20, 14], 64)
    q, k, v = (torch.randn(64, 2, 16) for _ in range(3))
    cpu_table(table(entry(10, {"flex": 1.0, "sdpa_dense": 2.0}, mode="fwd")))
    assert choose_backend(q, k, v, b) == "flex"
    cpu_table(table(entry(10, {"flex": 3.0, "sdpa_dense": 2.0}, mode="fwd")))
    assert choose_backend(q, k, v, b) == "sdpa_dense"
    q.requires_grad_()  # flex has no CPU backward: auto must not pick it, whatever the table says
    cpu_table(table(entry(10, {"flex": 1.0, "sdpa_dense": 2.0}, mode="fwd_bwd")))
    assert choose_backend(q, k, v, b) == "sdpa_dense"


class Fake(Backend):
    def __init__(self, name):
        self.name = name

    def supports(self, req):
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        return torch.zeros_like(q)


def test_auto_feature_is_measured_in_eager_mode_and_static_under_compile(cpu_table):
    """prepare() measures mean tokens per segment; under compile only shapes count."""
    for name in ("fake_short", "fake_long"):
        register_backend(Fake(name))
    try:
        cpu_table(table(entry(4, {"fake_short": 1.0, "fake_long": 2.0}), entry(60, {"fake_short": 2.0, "fake_long": 1.0})))
        b = DocBoundaries.from_lengths([60, 60], 120).static(40)  # 2 documents, 40 slots
        ctx = prepare(b)
        assert ctx.mean_seqlen == 60.0 and ctx.feature == 60.0
        q, k, v = (torch.randn(120, 2, 16, requires_grad=True) for _ in range(3))
        assert choose_backend(q, k, v, ctx) == "fake_long"
        req = dataclasses.replace(api._request(q, k, v, ctx, True, None), compiling=True)
        assert api._select(req, ctx, CPU).name == "fake_short"  # 120 tokens / 40 slots = 3
    finally:
        BACKENDS.pop("fake_short")
        BACKENDS.pop("fake_long")


def test_bench_writes_a_table_auto_then_uses(tmp_path, monkeypatch):
    out = tmp_path / "table.json"
    argv = ["bench", "attention", "--quick", "--device", "cpu", "--backends", "sdpa_dense,eager",
            "--layouts", "1d", "--modes", "fwd_bwd", "--out", str(out)]
    monkeypatch.setitem(select._USER, "cpu", None)  # restored after: register_table replaces it
    assert cli.main(argv) == 0
    t = json.loads(out.read_text())
    assert t["device"] == "cpu" and t["config"]["tokens"] == 512
    assert [e["median"] for e in t["entries"]] == [8, 32]
    for e in t["entries"]:
        assert set(e["ms"]) == {"sdpa_dense", "eager"} and e["docs"] > 1 and e["mean_seqlen"] > 1
    assert select.table_for("cpu") == t


def test_cpu_auto_charges_a_self_compile_against_what_it_saves(cpu_table):
    """flex compiles itself (seconds) on CPU: it wins only where it pays that back within
    PAYBACK_CALLS calls of the call's size; elsewhere (and on CUDA) the table alone decides."""
    t = table(entry(100, {"flex": 100.0, "sdpa_dense": 300.0}, mode="fwd"))
    t["config"] = {"tokens": 4096, "heads": 4, "head_dim": 64}
    cpu_table(t)
    names, cost = ["flex", "sdpa_dense"], {"flex": 15.0, "sdpa_dense": 0.0}
    calls = select.PAYBACK_CALLS["cpu"]

    def first(work, device=CPU):
        return rank_backends(names, device=device, feature=100, layout="1d", requires_grad=False, work=work,
                             compile_s=cost)[0]

    ref = 4096 * 4 * 64
    assert first(256 * 2 * 16) == "sdpa_dense"          # a test-sized call saves ~0.2 ms: never pays 15 s
    assert first(ref) == ("flex" if 200 * calls > 15e3 else "sdpa_dense")
    assert first(8 * ref) == "flex"                       # 1.6 s saved per call
    assert rank_backends(names, device=CPU, feature=100, layout="1d", requires_grad=False) == names  # no cost given
    # devices outside PAYBACK_CALLS: the table alone (a GPU run amortises its compiles)
    assert rank_backends(names, device=torch.device("meta"), feature=100, layout="1d", requires_grad=False,
                         work=1, compile_s=cost) == [n for n in FALLBACK_ORDER if n in names]


def test_unmeasured_self_compiling_backends_go_last_on_cpu(cpu_table):
    cpu_table(table(entry(100, {"eager": 5.0})))
    got = rank_backends(["flex", "sdpa_dense", "eager"], device=CPU, feature=100, layout="1d", requires_grad=False,
                        work=1, compile_s={"flex": 15.0})
    assert got == ["eager", "sdpa_dense", "flex"]


def test_small_cpu_forward_picks_a_backend_that_does_not_compile():
    """The shipped CPU table has flex 2-6x faster than sdpa_dense for a forward, but a small
    call would wait seconds for flex's compile to save microseconds."""
    b = DocBoundaries.from_lengths([30, 20, 14], 64)
    q, k, v = (torch.randn(64, 2, 16) for _ in range(3))
    assert choose_backend(q, k, v, b) == "sdpa_dense"
    big = DocBoundaries.from_lengths([150] * 27, 4096, max_seqlen=1024)
    q, k, v = (torch.randn(4096, 16, 64) for _ in range(3))
    assert choose_backend(q, k, v, big) == "flex"         # 16 heads x 64 on a 1D band: pays back


def test_importing_seqpack_attention_loads_no_dynamo():
    """torch._dynamo (with inductor and Triton) costs seconds to import; neither importing
    seqpack.attention nor a CPU call that does not compile may load it."""
    code = ("import sys, torch\n"
            "import seqpack.attention.select, seqpack.attention as A\n"
            "from seqpack.boundaries import DocBoundaries\n"
            "b = DocBoundaries.from_lengths([30, 34])\n"
            "q = torch.randn(64, 2, 16, requires_grad=True)\n"
            "A.varlen_attention(q, q, q, b).sum().backward()\n"
            "with torch.no_grad():\n"
            "    A.varlen_attention(q, q, q, b)\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'triton') if sys.modules.get(m)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_constant_result_marks_functions_as_dynamo_does(monkeypatch):
    import torch._dynamo

    from seqpack.attention.base import constant_result

    def ours():
        return 1

    def theirs():
        return 1

    torch._dynamo.assume_constant_result(theirs)
    monkeypatch.delitem(sys.modules, "torch._dynamo")  # as if dynamo were not loaded (restored after)
    constant_result(ours)
    assert vars(ours) == vars(theirs) == {"_dynamo_marked_constant": True}


def test_varlen_params_load_once_outside_a_compiled_graph(monkeypatch):
    """A model compiled before any eager call: the lazy import of varlen_attn is done by
    dynamo calling the constant-marked loader, and the graph keeps no break."""
    from torch._dynamo.utils import counters

    from seqpack.attention import torch_varlen as tv
    monkeypatch.setattr(tv, "_LOADED", False)
    monkeypatch.setattr(tv, "_VARLEN", None)
    monkeypatch.setattr(tv, "_PARAMS", frozenset())

    def f(x):
        return x + (1 if tv.varlen_params() and "window_size" in tv.varlen_params() else 2)

    torch._dynamo.reset()
    counters.clear()
    got = torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(2))
    assert dict(counters["graph_break"]) == {}
    assert tv._LOADED and torch.equal(got, f(torch.zeros(2)))


class OffByOnePercent(Backend):
    """sdpa_dense with a 1% wrong scale: what a miscompiled kernel looks like to the bench."""
    name = "off_by_one_percent"

    def supports(self, req):
        return BACKENDS["sdpa_dense"].supports(req)

    def __call__(self, q, k, v, ctx, req, scale):
        return BACKENDS["sdpa_dense"](q, k, v, ctx, req, scale * 1.01)


def test_bench_leaves_a_wrong_backend_out_of_the_table(tmp_path, monkeypatch):
    from seqpack.attention.bench import check_backend
    assert check_backend("sdpa_dense", "cpu", heads=4, kv_heads=2, head_dim=16, dtype=torch.float32,
                         max_seqlen=64) is None
    register_backend(OffByOnePercent())
    try:
        why = check_backend("off_by_one_percent", "cpu", heads=4, kv_heads=2, head_dim=16, dtype=torch.float32,
                            max_seqlen=64)
        assert why is not None and "wrong answer" in why and "out" in why
        out = tmp_path / "table.json"
        monkeypatch.setitem(select._USER, "cpu", None)
        argv = ["bench", "attention", "--quick", "--device", "cpu", "--backends", "sdpa_dense,off_by_one_percent",
                "--layouts", "1d", "--modes", "fwd", "--out", str(out)]
        assert cli.main(argv) == 0
        for e in json.loads(out.read_text())["entries"]:
            assert set(e["ms"]) == {"sdpa_dense"} and "wrong answer" in e["skipped"]["off_by_one_percent"]
    finally:
        BACKENDS.pop("off_by_one_percent")
