"""Every causal-LM family of the installed transformers, packed, on every implementation and entry point.

Shared by test_hf_families.py (the sweep CI runs) and, as a script, by whoever wants the table:

    python tests/hf/families.py --report [FAMILY ...]   # family x implementation: exact / refused / LEAK ...
    python tests/hf/families.py --table --docs docs/hf.md   # the support table, written into docs/hf.md

For each family: a tiny random model from its config class (`hf_verify.tiny_config`: hidden 64,
2 layers, fp32), five documents packed into two rows (the second padded), and for each
implementation (eager, sdpa, flex_attention, "seqpack") each documented entry point:
``configure_packing`` + integer mask, ``enable_packing`` + integer mask / restarting position_ids /
the collator's dict / a `PackedBatch`. Each document's packed logits are compared with the
document run alone on eager (computed once per family, shared by every cell).

A cell is one of:
- ``exact``: every document within 1e-4 (fp32 logits) of its run alone;
- ``refused``: a `PackingError` (its first sentence is the reason);
- ``n/a``: transformers itself does not offer this implementation for the family;
- ``WRONG``: the packed run differs, and so does one document run alone on this implementation
  (not a packing problem: the implementation computes something else);
- ``LEAK``: packed differs, alone does not. ``caught`` says whether `check_isolation` (the
  runtime probe, run with its own documents) refuses the same model and form;
- ``CRASH``: any other exception.
The runtime check is off while the cells are measured (it would turn every leak into a refusal).
Where transformers' own loss fails on one document unpacked (git assumes image positions), the
packed calls run without labels after seqpack's hook: the logits are what is compared.
Expected refusals are `expected_refusal`'s (the lists below, the hybrid families below
transformers 5.25, and `seqpack.integrations.hf._LEAKY_BEFORE` on older transformers).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import torch

IMPLS = ("eager", "sdpa", "flex_attention", "seqpack")
ENTRIES = ("configure+int_mask", "enable+int_mask", "enable+position_ids", "enable+collator",
           "enable+packed_batch")
TOL = 1e-4
LENGTHS = (5, 7, 3, 6, 4)
ROWS = ((0, 1, 2), (3, 4))  # the second row is padded (ROW_LEN below)
ROW_LEN = 17

# Expected refusals on every implementation: family -> words the refusal must contain (why, in a line).
_OWN_CODE = "runs its own attention code"  # its own eager attention on a mask it builds from a 0/1 padding mask
_NO_POSITIONS = "takes no position_ids"  # positions counted from the row start: later documents misplaced
_MIXES = "mix tokens outside attention"  # a token mixer seqpack does not give document boundaries
REFUSED = {
    **{f: _OWN_CODE for f in ("big_bird", "cpmant", "megatron-bert", "openai-gpt", "rembert", "roformer", "xlm",
                              "xlnet")},
    "bloom": "ALiBi",  # its ALiBi bias is built from the 0/1 padding mask, inside its own attention code
    **{f: _NO_POSITIONS for f in ("bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart",
                                  "mvp", "pegasus", "plbart", "prophetnet", "trocr", "whisper")},
    "rwkv": _MIXES,  # a recurrent state carried along the row
    "lara_mini": _MIXES, "qwen4_exp": _MIXES, "qwen4_exp_text": _MIXES,  # gated DeltaNet layers hf_hybrid does not know
    "lfm3": _MIXES,  # short convolutions hf_hybrid does not know
    # a short convolution on the keys, inside attention
    "inkling_text": _MIXES, "inkling2_text": _MIXES, "inkling2_loop_text": _MIXES,
    "zaya": _MIXES,  # a convolution inside the attention block mixes neighbouring tokens across boundaries
}
# Hybrid/recurrent families seqpack makes exact on transformers >= hf_hybrid.MIN_TRANSFORMERS (their
# layers and masks differ below it, where they are refused as mixing tokens outside attention).
HYBRID = ("qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "olmo_hybrid", "lfm2",
          "lfm2_moe", "mamba", "mamba2", "falcon_mamba", "bamba", "nemotron_h", "falcon_h1", "zamba", "zamba2",
          "granitemoehybrid", "jamba", "minimax", "recurrent_gemma", "kimi_linear", "bailing_hybrid")
# (family, implementation) -> words of the refusal, for refusals of one implementation only.
REFUSED_CELLS: dict[tuple[str, str], str] = {
    # builds its causal mask without position_ids: exact only on "seqpack" (varlen, no mask)
    **{("granitemoehybrid", i): "builds its causal mask without position_ids" for i in ("eager", "sdpa",
                                                                                      "flex_attention")},
    # these implementations compute something else than eager for the family, one document alone
    ("doge", "flex_attention"): "computes something other than eager",  # its dynamic mask is not applied
    ("git", "seqpack"): "computes something other than eager",  # text attention: own code, no causal mask
    # no attention at all: an attention implementation is meaningless (eager is what they run)
    **{(f, "seqpack"): "ignores attn_implementation='seqpack'" for f in ("mamba", "mamba2", "falcon_mamba")},
}
# Eager-only families (transformers offers them no attention interface: sdpa is n/a too) keep eager when
# asked for "seqpack": enable_packing refuses that, whatever the family (`problems`).
_KEPT_EAGER = "kept attn_implementation 'eager'"


def expected_refusal(family: str, impl: str) -> str | None:
    """Words the refusal of ``family`` on ``impl`` must contain, or None where it must be exact."""
    from seqpack.integrations import hf
    if family in HYBRID and not _hybrid_supported():
        return _MIXES
    if hf._leaks_on_this_transformers(family, impl):  # older transformers: hf._LEAKY_BEFORE says why
        return "lets packed documents see each other on transformers"
    if (family, impl) in REFUSED_CELLS:
        return REFUSED_CELLS[family, impl]
    return REFUSED.get(family)


def _hybrid_supported() -> bool:
    import transformers
    from packaging.version import Version

    from seqpack.integrations import hf_hybrid
    return Version(transformers.__version__) >= Version(hf_hybrid.MIN_TRANSFORMERS)


# Families not built by the sweep, and why (a family listed here that builds fails the test).
NOT_BUILT = {
    "blt": "byte-patch model: its local encoder/decoder and patcher configs keep their full size "
           "(a 12 GB allocation); packing bytes needs patch boundaries per document",
    "phi4_multimodal": "vision and audio towers are not shrunk by the text config (870M parameters)",
    "moss_transcribe_diarize": "audio tower not shrunk by the text config (300M parameters)",
    "gemma3n": "needs timm for its vision tower",
    "musicgen": "two text configs (text encoder and decoder); needs audio codes as input",
    "musicgen_melody": "two text configs (text encoder and decoder); needs audio codes as input",
    "cohere_compass_text": "its default layer pattern does not validate at 2 layers",
    "dbrx": "its nested attention config has no rope_theta when built from defaults",
    "gemma3n_text": "KV-sharing layer pattern does not validate at 2 layers",
    "gemma4_assistant": "an assistant head that needs a target model's per-layer inputs",
    "gemma4_unified_assistant": "KV-sharing layer pattern does not validate at 2 layers",
    "dots3_note": "per-layer head counts: the tiny sizes do not apply to its layer-wise config",
    "dots3_note_text": "per-layer head counts: the tiny sizes do not apply to its layer-wise config",
    "reformer": "axial position embeddings must factor the maximum length; LSH attention hashes across the row",
    "xlstm": "its mLSTM block sizes do not follow the tiny hidden size (refused anyway: recurrent)",
}
# Not built on transformers older than 5.25 (hf_hybrid.MIN_TRANSFORMERS) only.
NOT_BUILT_BEFORE_HYBRID = {
    "zamba2": "transformers < 5.25: its model reads a rotary_emb it does not build from this config (refused there "
              "anyway: hybrid)",
    "emu3": "transformers < 5.25: its composite config has no vocab_size where its model reads it",
    "llama4": "transformers < 5.25: its composite config has no vocab_size where its model reads it",
}
_TOO_BIG = ("blt", "phi4_multimodal", "moss_transcribe_diarize")


@dataclass
class Cell:
    status: str  # exact | refused | n/a | WRONG | LEAK | CRASH
    detail: str = ""
    diff: float = float("nan")
    caught: bool | None = None

    def short(self) -> str:
        if self.status == "exact":
            return "exact"
        if self.status == "LEAK":
            return f"LEAK {self.diff:.2g}" + (" (caught)" if self.caught else " (MISSED by check)")
        if self.status == "WRONG":
            return f"WRONG {self.diff:.2g}"
        return f"{self.status}: {self.detail}"


@dataclass
class FamilyResult:
    family: str
    built: str = ""  # why it was not built, else ""
    cells: dict = field(default_factory=dict)  # (impl, entry) -> Cell


def families() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _first_sentence(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else ""
    m = re.match(r"(.{20,220}?[.:;])(\s|$)", text)
    return (m.group(1) if m else text[:220]).rstrip(".:;")


def _quiet():
    import transformers
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def _build(family: str):
    """A tiny model of ``family`` built under configure_packing (LLaMA-Factory's switch), in eval mode."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from seqpack.integrations import hf, hf_check
    from seqpack.integrations.hf_verify import tiny_config
    config = tiny_config(family)
    hf.configure_packing(SimpleNamespace(block_diag_attn=True), True)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    finally:
        hf.unconfigure_packing()
    for m in model.modules():  # configure_packing hooks every PreTrainedModel, the inner ones too
        if hf.is_packing_enabled(m):
            hf_check.set_check(m, False)
    return model.eval()


def _logits(out) -> torch.Tensor:
    return out.logits.detach().float()


def _packed_diff(model, docs, batch, refs, form: str) -> float:
    from seqpack.integrations.hf_verify import _call
    b = batch.boundaries
    flat = _logits(_call(model, batch, form)).reshape(b.numel, -1)
    cu = b.cu_seqlens.tolist()
    segs = [i for i, d in enumerate(b.is_doc.tolist()) if d]
    return max(float((flat[cu[s]:cu[s + 1]] - refs[int(batch.doc_index[i])]).abs().max())
               for i, s in enumerate(segs))


def _loss_fails_unpacked(model, doc) -> bool:
    """Whether transformers' own loss fails on one document with labels, unpacked (git computes its loss
    over image positions it assumes are there)."""
    try:
        model(input_ids=doc[None], labels=doc[None], use_cache=False)
        return False
    except Exception:  # noqa: BLE001
        return True


@contextlib.contextmanager
def _without_labels(model):
    """Calls of ``model`` lose their labels after seqpack's hook (which still sees and masks them)."""
    handle = model.register_forward_pre_hook(lambda m, a, kw: (a, {k: v for k, v in kw.items() if k != "labels"}),
                                             with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _classify(model, impl, form, docs, batch, refs, alone_diff) -> Cell:
    from seqpack.integrations import hf
    try:
        try:
            diff = _packed_diff(model, docs, batch, refs, form)
        except hf.PackingError:
            raise
        except Exception:  # noqa: BLE001
            if not _loss_fails_unpacked(model, docs[0]):
                raise
            with _without_labels(model):  # the logits are what the sweep compares
                diff = _packed_diff(model, docs, batch, refs, form)
    except hf.PackingError as exc:
        return Cell("refused", _first_sentence(str(exc)))
    except Exception as exc:  # noqa: BLE001 - a crash is a result here
        if "cannot be run on CPU" in str(exc):  # transformers' own limit (flex with sinks), not seqpack's
            return Cell("n/a", f"transformers on CPU: {_first_sentence(str(exc))}")
        return Cell("CRASH", f"{type(exc).__name__}: {_first_sentence(str(exc))}")
    if diff <= TOL:
        return Cell("exact", diff=diff)
    if alone_diff > TOL:
        return Cell("WRONG", f"one document alone already differs by {alone_diff:.2g}", diff=diff)
    try:
        hf.check_isolation(model, forms=[form])
        caught = False
    except hf.PackingError:
        caught = True
    except Exception:  # noqa: BLE001
        caught = False
    return Cell("LEAK", diff=diff, caught=caught)


def run_family(family: str, impls=IMPLS, entries=ENTRIES) -> FamilyResult:
    """All cells of one family (see the module docstring).

    flex_attention runs uncompiled meanwhile (`_flex_uncompiled`).
    """
    with _flex_uncompiled():
        return _run_family(family, impls, entries)


@contextlib.contextmanager
def _flex_uncompiled():
    """transformers' flex_attention path without torch.compile: torch's reference flex_attention and an
    uncompiled create_block_mask, the same mask_mod and score_mod computed unfused. Compiling a CPU
    kernel for each family costs tens of seconds; what the sweep tests is the masks transformers builds."""
    from unittest import mock

    from torch.nn.attention import flex_attention as torch_flex
    from transformers import masking_utils
    patches = []
    try:
        from transformers.integrations import flex_attention as hf_flex
        patches.append(mock.patch.object(hf_flex.WrappedFlexAttention, "__call__",
                                         lambda self: torch_flex.flex_attention))
    except (ImportError, AttributeError):
        pass
    if hasattr(masking_utils, "create_block_mask"):
        original = masking_utils.create_block_mask

        def create_block_mask(*args, **kwargs):
            kwargs["_compile"] = False
            return original(*args, **kwargs)
        patches.append(mock.patch.object(masking_utils, "create_block_mask", create_block_mask))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def _run_family(family, impls, entries) -> FamilyResult:
    from seqpack.integrations import hf
    from seqpack.integrations.hf_verify import make_rows
    _quiet()
    res = FamilyResult(family)
    if family in _TOO_BIG:
        res.built = NOT_BUILT[family]
        return res
    try:
        model = _build(family)
    except Exception as exc:  # noqa: BLE001
        res.built = f"{type(exc).__name__}: {_first_sentence(str(exc))}"
        return res
    vocab = model.config.get_text_config().vocab_size
    docs, batch = make_rows(LENGTHS, ROWS, min(vocab, 1000), capacity=ROW_LEN, seed=0)
    with torch.no_grad():
        try:
            refs = [_logits(model(input_ids=d[None], use_cache=False))[0] for d in docs]
        except Exception as exc:  # noqa: BLE001
            res.built = f"one document alone fails on eager: {type(exc).__name__}: {_first_sentence(str(exc))}"
            return res
        for impl in impls:
            try:
                model.set_attn_implementation(impl)
                if model.config._attn_implementation != impl:
                    raise ValueError(f"transformers keeps {model.config._attn_implementation!r}")
                unavailable = None
            except Exception as exc:  # noqa: BLE001 - transformers' own refusal of this implementation
                unavailable = _first_sentence(str(exc))
            try:
                alone = _logits(model(input_ids=docs[1][None], use_cache=False))[0]
                alone_diff = float((alone - refs[1]).abs().max())
            except Exception:  # noqa: BLE001 - the packed cells say what happens
                alone_diff = float("nan")
            for entry in entries:
                how, form = entry.split("+")
                if unavailable is not None and (impl != "seqpack" or how == "configure"):
                    res.cells[impl, entry] = Cell("n/a", f"transformers: {unavailable}")
                    continue
                if how == "enable":
                    try:  # on the model configure_packing hooked: enable_packing keeps the one hook
                        hf.enable_packing(model, attn_implementation=impl, check=False)
                    except hf.PackingError as exc:
                        res.cells[impl, entry] = Cell("refused", _first_sentence(str(exc)))
                        continue
                    except Exception as exc:  # noqa: BLE001
                        res.cells[impl, entry] = Cell("CRASH", f"{type(exc).__name__}: {_first_sentence(str(exc))}")
                        continue
                elif not hf.is_packing_enabled(model):
                    res.cells[impl, entry] = Cell("CRASH", "configure_packing did not hook the model")
                    continue
                res.cells[impl, entry] = _classify(model, impl, form, docs, batch, refs, alone_diff)
            model.set_attn_implementation("eager") if impl != "eager" and unavailable is None else None
    return res


def problems(res: FamilyResult) -> list[str]:
    """What makes this family fail the sweep (empty when it passes)."""
    out = []
    if res.built:
        if res.family not in NOT_BUILT and (_hybrid_supported() or res.family not in NOT_BUILT_BEFORE_HYBRID):
            out.append(f"{res.family}: not built ({res.built}); fix tiny_config or list it in NOT_BUILT")
        return out
    if res.family in NOT_BUILT and res.family not in _TOO_BIG:
        out.append(f"{res.family}: listed in NOT_BUILT but builds now: remove it from the list")
    for (impl, entry), c in res.cells.items():
        expected = expected_refusal(res.family, impl)
        if c.status == "n/a":
            continue
        if c.status == "refused":
            if expected is not None and expected in c.detail:
                continue
            if impl == "seqpack" and _KEPT_EAGER in c.detail and _eager_only(res):
                continue  # transformers offers this family no attention interface at all (sdpa is n/a too)
            out.append(f"{res.family}/{impl}/{entry}: refused without being listed: {c.detail}")
        elif c.status == "exact":
            if expected is not None:
                out.append(f"{res.family}/{impl}/{entry}: exact but listed as refused ({expected}): update the list")
        else:
            out.append(f"{res.family}/{impl}/{entry}: {c.short()}")
    return out


def _eager_only(res: FamilyResult) -> bool:
    return all(c.status == "n/a" for (impl, _), c in res.cells.items() if impl == "sdpa")


# ----------------------------------------------------------------------------------------
# the report and the table


def summarise(res: FamilyResult, impl: str) -> str:
    """One word (and reason) per family and implementation: the worst cell over the entry points."""
    if res.built:
        return "not built"
    cells = [res.cells[k] for k in res.cells if k[0] == impl]
    order = ("CRASH", "WRONG", "LEAK", "refused", "n/a", "exact")
    worst = min(cells, key=lambda c: order.index(c.status))
    if worst.status == "exact":
        return "exact"
    bad = [f"{e.split('+')[0][:3]}+{e.split('+')[1]}" for (i, e), c in res.cells.items()
           if i == impl and c.status == worst.status]
    where = "" if len(bad) == len(cells) else f" [{', '.join(bad)}]"
    return worst.short() + where


def _run_all(names, processes: int):
    if processes <= 1:
        return [run_family(f) for f in names]
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(processes, initializer=torch.set_num_threads, initargs=(1,),
                                      maxtasksperchild=20) as pool:
        out = []
        for r in pool.imap(run_family, names, chunksize=1):  # in order; progress on stderr
            out.append(r)
            print(f"[{len(out)}/{len(names)}] {r.family}", file=sys.stderr, flush=True)
        return out


def report(results) -> str:
    lines = [f"{'family':<28} " + " | ".join(f"{i:<28}" for i in IMPLS)]
    counts: dict[str, int] = {}
    for r in results:
        row = [summarise(r, i) for i in IMPLS] if not r.built else [f"not built: {r.built}"] + [""] * 3
        for cell in row:
            if cell:
                key = cell.split(" ")[0].split(":")[0]
                counts[key] = counts.get(key, 0) + 1
        lines.append(f"{r.family:<28} " + " | ".join(f"{c:<28}" for c in row))
    fails = [p for r in results for p in problems(r)]
    lines.append("cells: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append(f"{len(fails)} problem(s) against the expected list" + (":" if fails else ""))
    lines += [f"  {p}" for p in fails]
    return "\n".join(lines)


def _for_users(text: str) -> str:
    """A table cell as a user meets it: a leak the runtime probe catches is a refusal at the first call."""
    text = text.replace("|", "/")
    m = re.match(r"LEAK (\S+) \(caught\)(.*)", text)
    if m:
        return f"refused by the runtime check (leaks {m.group(1)}){m.group(2)}"
    where = re.search(r" \[[^\]]*\]$", text)
    where = where.group(0) if where else ""
    for pattern, short in _SHORT:
        if re.search(pattern, text):
            return short + where
    return text[:100]


_SHORT = [  # (what a cell says, how the table says it)
    (r"^n/a", "n/a"),
    (r"mix tokens outside attention", "refused: token mixing outside attention"),
    (r"kept attn_implementation 'eager'", "refused: no attention interface (eager only)"),
    (r"ignores attn_implementation", "refused: ignores the implementation (eager only)"),
    (r"ALiBi", "refused: ALiBi bias from the 0/1 padding mask"),
    (r"runs its own attention code", "refused: own attention code, mask from the 0/1 padding mask"),
    (r"takes no position_ids", "refused: takes no position_ids"),
    (r"builds its causal mask without position_ids", "refused: mask built without position_ids"),
    (r"computes something other than eager", "refused: differs from eager even on one unpacked document"),
]


def table(results) -> str:
    """The markdown support table of docs/hf.md."""
    import transformers
    out = [f"Generated by `python tests/hf/families.py --table` on transformers {transformers.__version__}, "
           f"torch {torch.__version__.split('+')[0]}, CPU, fp32 (tiny random models: hidden 64, 2 layers). "
           f"`exact`: every document's logits within {TOL:g} of the document run alone, on every entry point "
           f"(configure_packing + integer mask; enable_packing + integer mask, restarting position_ids, the "
           f"collator's dict, a PackedBatch). `n/a`: transformers does not offer that implementation for the family.",
           "", "| family | " + " | ".join(f"`{i}`" for i in IMPLS) + " |", "|---" * (len(IMPLS) + 1) + "|"]
    for r in results:
        if r.built:
            out.append(f"| {r.family} | not tested: {NOT_BUILT.get(r.family, r.built)} |" + " |" * (len(IMPLS) - 1))
            continue
        out.append(f"| {r.family} | " + " | ".join(_for_users(summarise(r, i)) for i in IMPLS) + " |")
    return "\n".join(out)


def _splice(path, text: str) -> None:
    start, end = "<!-- support-table:start -->", "<!-- support-table:end -->"
    with open(path) as f:
        doc = f.read()
    if doc.count(start) != 1 or doc.count(end) != 1:
        raise SystemExit(f"{path}: needs one {start} and one {end} line to put the table between")
    head, rest = doc.split(start)
    with open(path, "w") as f:
        f.write(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def _save(results, path) -> None:
    import json
    rows = [{"family": r.family, "built": r.built,
             "cells": [[i, e, c.status, c.detail, c.diff, c.caught] for (i, e), c in r.cells.items()]}
            for r in results]
    with open(path, "w") as f:
        json.dump(rows, f, indent=0)


def _load(path) -> list[FamilyResult]:
    import json
    with open(path) as f:
        rows = json.load(f)
    return [FamilyResult(r["family"], r["built"], {(i, e): Cell(st, d, diff, c) for i, e, st, d, diff, c in r["cells"]})
            for r in rows]


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*", help="families to run (default: all)")
    p.add_argument("--report", action="store_true", help="print family x implementation results")
    p.add_argument("--table", action="store_true", help="print the markdown table for docs/hf.md")
    p.add_argument("--docs", default=None, help="with --table: write it into this markdown file, between "
                                                "<!-- support-table:start --> and <!-- support-table:end -->")
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--results", default=None,
                   help="JSON file: read the results from it when it exists (no run), else run and write it")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.families or families()
    if args.results and os.path.exists(args.results):
        results = _load(args.results)
    else:
        results = _run_all(names, args.processes)
        if args.results:
            _save(results, args.results)
    if args.table and args.docs:
        _splice(args.docs, table(results))
    elif args.table:
        print(table(results))
    else:
        print(report(results))
    return 1 if any(problems(r) for r in results) else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))
    sys.exit(main())
