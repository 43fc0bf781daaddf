"""``backend="auto"``: correct first, then fastest according to a measured calibration table.

The rule, in order:
1. Keep the backends whose ``supports(request)`` is None (device, dtype, grad, window,
   GQA, head dim, torch.compile). The eager reference is kept only as the last resort.
2. Take the calibration table for this device: the user's cache
   (``$SEQPACK_CACHE`` or ``~/.cache/seqpack``, ``attention-<device>-torch<version>.json``,
   written by ``seqpack bench attention``), else the one shipped in
   ``seqpack/calibration/`` whose ``device_match`` is in the device name.
3. The table times every backend on a grid of length distributions. The batch's feature
   is its mean segment length (tokens per non-empty segment): measured by `prepare` when
   that is free (``cu_seqlens`` still on the CPU), else ``tokens / segments`` from the
   shapes alone (under ``torch.compile`` always the latter, so the choice is a constant
   of the compiled graph and never recompiles). Each backend's time is interpolated in
   log-log between the two grid points around the feature (same layout and mode, fwd or
   fwd+bwd, when the table has them), and the fastest kept backend wins.
4. Kept backends the table never measured come after the measured ones, in the fixed
   order ``FALLBACK_ORDER`` (also the whole ranking when no table matches the device).
5. On the devices of ``PAYBACK_CALLS`` (CPU), a backend that would compile itself on this
   call (flex outside torch.compile) is charged that compile spread over that many calls
   of the call's size: a test-sized CPU forward never waits seconds for flex.

Everything here is plain Python over module-level dicts: it traces under torch.compile
without a graph break. Files are read when this module is imported (and when the bench
writes a new table), never during a call.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from importlib import resources
from pathlib import Path

import torch

from seqpack.attention.base import constant_result as _constant_result

__all__ = ["FALLBACK_ORDER", "PAYBACK_CALLS", "cache_dir", "table_path", "device_name", "device_key", "rank_backends",
           "load_tables", "register_table", "table_for"]

# Without a measurement: FlashAttention first (fastest on every length distribution
# measured, docs/bench/attention.md), then flex (fastest of the PyTorch-only paths on 2 of 3 distributions), then
# varlen_attn; our Triton kernel (opt-in) only where a table measured it; the dense and
# nested paths were 3-5x slower; eager last.
FALLBACK_ORDER = ("flash_attn.cute", "flash_attn_interface", "flash_attn", "flex", "torch_varlen",
                  "triton_varlen", "sdpa_dense", "sdpa_njt", "eager")

SCHEMA = 1

# Devices where auto weighs a backend's one-off compile (flex outside torch.compile compiles
# itself per new shape) against the time it saves: it must pay for itself within this many
# calls of the call's size. CPU only: there the compile takes seconds to tens of seconds
# (docs/bench/attention.md) and CPU work is typically short (tests, demos, evaluation), while a CUDA run that uses flex trains for minutes to days on one shape.
PAYBACK_CALLS = {"cpu": 100}


# ----------------------------------------------------------------------------------------
# where tables live


def cache_dir() -> Path:
    return Path(os.environ.get("SEQPACK_CACHE") or Path.home() / ".cache" / "seqpack")


def device_key(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def table_path(name: str, torch_version: str | None = None) -> Path:
    v = device_key(torch_version or torch.__version__)
    return cache_dir() / f"attention-{device_key(name)}-torch{v}.json"


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@_constant_result
def _current_cuda_name() -> str:
    # Under torch.compile we cannot query the driver; the model runs on the current device.
    return torch.cuda.get_device_name(torch.cuda.current_device())


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    if torch.compiler.is_compiling():
        return _current_cuda_name()
    return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@_constant_result
def _current_cuda_major() -> int:
    return torch.cuda.get_device_capability(torch.cuda.current_device())[0]


@_constant_result
def _current_cuda_minor() -> int:
    return torch.cuda.get_device_capability(torch.cuda.current_device())[1]


def capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    if torch.compiler.is_compiling():
        return (_current_cuda_major(), _current_cuda_minor())
    return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())


# ----------------------------------------------------------------------------------------
# tables: loaded once, looked up by device name

_SHIPPED: list[dict] = []          # tables in seqpack/calibration/, each with "device_match"
_USER: dict[str, dict] = {}        # device key -> the user's table for this torch version


def _read(path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def load_tables() -> None:
    """(Re)read the shipped tables and the user's cache for this torch version."""
    _SHIPPED.clear()
    _USER.clear()
    try:
        for f in resources.files("seqpack").joinpath("calibration").iterdir():
            if f.name.endswith(".json"):
                t = _read(f)
                if t is not None:
                    _SHIPPED.append(t)
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    d = cache_dir()
    suffix = f"-torch{device_key(torch.__version__)}.json"
    if d.is_dir():
        for f in d.glob(f"attention-*{suffix}"):
            t = _read(f)
            if t is not None:
                _USER[f.name[len("attention-"):-len(suffix)]] = t


def register_table(table: dict) -> None:
    """Use this table for its device from now on (the bench calls it after writing one)."""
    _USER[device_key(table["device"])] = table


def table_for(name: str) -> dict | None:
    """The user's table for this device, else the shipped one whose ``device_match`` fits."""
    t = _USER.get(device_key(name))
    if t is not None:
        return t
    low = name.lower()
    for t in _SHIPPED:
        if t.get("device_match", "\0").lower() in low:
            return t
    return None


load_tables()


# ----------------------------------------------------------------------------------------
# ranking


def _interp_ms(entries: list[dict], feature: float) -> dict[str, float]:
    """Each backend's time at ``feature``, log-log interpolated between grid points."""
    pts = sorted(entries, key=lambda e: e["mean_seqlen"])
    x = math.log(max(feature, 1.0))
    lo = hi = None
    for e in pts:
        if math.log(e["mean_seqlen"]) <= x:
            lo = e
        elif hi is None:
            hi = e
    if lo is None:
        lo = hi
    if hi is None:
        hi = lo
    out = {}
    for name in set(lo["ms"]) & set(hi["ms"]):
        a, b = lo["ms"][name], hi["ms"][name]
        if a is None or b is None:
            continue
        xa, xb = math.log(lo["mean_seqlen"]), math.log(hi["mean_seqlen"])
        t = 0.0 if xb == xa else min(max((x - xa) / (xb - xa), 0.0), 1.0)
        out[name] = math.exp(math.log(a) * (1 - t) + math.log(b) * t)
    return out


def _pick_entries(table: dict, layout: str, mode: str) -> list[dict]:
    entries = [e for e in table.get("entries", []) if e.get("ms")]
    for want in ((layout, mode), (None, mode), (layout, None), (None, None)):
        sel = [e for e in entries if (want[0] is None or e.get("layout") == want[0])
               and (want[1] is None or e.get("mode") == want[1])]
        if sel:
            return sel
    return []


def _work_scale(table: dict, work: float | None) -> float:
    """This call's size relative to the table's: tokens x heads x head dim (time ~ linear in it
    at a fixed mean segment length, the table's other axis)."""
    cfg = table.get("config") or {}
    ref = cfg.get("tokens", 0) * cfg.get("heads", 0) * cfg.get("head_dim", 0)
    return work / ref if work and ref else 1.0


def rank_backends(candidates: list[str], *, device: torch.device, feature: float, layout: str,
                  requires_grad: bool, work: float | None = None,
                  compile_s: dict[str, float] | None = None) -> list[str]:
    """``candidates`` (already filtered by ``supports``) ordered fastest first for this batch.

    ``work`` (tokens x heads x head dim of the call) and ``compile_s`` (seconds of one-off
    compilation a backend would start on this call) matter only on the devices of
    `PAYBACK_CALLS`: there a backend's table time is charged ``compile_s`` spread over that
    many calls of this size, so a self-compiling backend wins only where it pays for its
    compile soon. Unmeasured self-compiling backends go after the unmeasured others there.
    """
    table = table_for(device_name(device))
    times: dict[str, float] = {}
    scale = 1.0
    if table is not None:
        entries = _pick_entries(table, layout, "fwd_bwd" if requires_grad else "fwd")
        if entries:
            times = _interp_ms(entries, feature)
        scale = _work_scale(table, work)
    calls = PAYBACK_CALLS.get(device.type)
    cost = {n: (compile_s or {}).get(n, 0.0) if calls else 0.0 for n in candidates}
    # table ms + compile ms per call over `calls` calls, in table ms (call ms = table ms x scale)
    charged = {n: times[n] + (cost[n] * 1e3 / (calls * scale) if cost[n] else 0.0) for n in candidates if n in times}
    prior = {n: i for i, n in enumerate(FALLBACK_ORDER)}
    measured = sorted(charged, key=lambda n: charged[n])
    rest = sorted((n for n in candidates if n not in times), key=lambda n: (cost[n] > 0, prior.get(n, len(prior))))
    return measured + rest
