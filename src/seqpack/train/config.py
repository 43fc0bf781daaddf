"""The training configuration: one dataclass, every field a ``seqpack train`` flag.

Notable:
- Each option is defined once, by `opt`: default, help, choices and range; the command
  line and `TrainConfig.validate` read them from the field.
- Model fields left at None take the preset's value (`seqpack.model.PRESETS`).
- ``rows_per_step x capacity`` is the number of token slots per optimiser step over all
  ranks (e.g. 32K: 8 rows of 4,096).
- ``"auto"`` values resolve at start-up: device (cuda if available), dtype (bf16 autocast
  on GPU, float32 on CPU), compile (whole model on GPU, off on CPU), dist (from torchrun's
  environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from seqpack.errors import InputError

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args", "parse_inductor_options", "compile_kwargs",
           "uses_cudagraphs"]


def opt(default, help: str = "", *, choices: tuple | None = None, ge=None, gt=None, le=None, lt=None):
    """A `TrainConfig` field and everything about it in one place: the default, the
    ``--flag`` help, the allowed choices and the allowed range (``ge``/``gt`` lowest,
    ``le``/``lt`` highest). ``validate`` and the command line both read them."""
    return field(default=default, metadata={"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt})


@dataclass
class TrainConfig:
    """Every option of ``seqpack train``; each field is one ``--flag`` (see `opt`)."""

    # model
    preset: str = opt("tiny", 'model size: tiny, mini, small, 124M, 304M')
    n_layer: int | None = opt(None, "transformer blocks (None: the preset's)", ge=1)
    n_head: int | None = opt(None, "attention heads (None: the preset's)", ge=1)
    n_kv_head: int | None = opt(None, "key/value heads, GQA (None: the preset's)", ge=1)
    n_embd: int | None = opt(None, "model width (None: the preset's)", ge=1)
    window: int | None = opt(None, "sliding attention window in tokens for windowed layers (None: the preset's)", ge=1)
    window_pattern: str | None = opt(None, "layers with the window, tiled: G global, S sliding, e.g. SSSG "
                                           "(None: the preset's)")
    tie_embeddings: bool | None = opt(None, "share the input embedding with the output head (None: the preset's)")
    positions: str = opt("doc", 'doc: RoPE positions restart per document; buffer: run over the row/buffer',
                         choices=('doc', 'buffer'))
    attn_backend: str = opt("auto", 'varlen_attention backend for packed mode: auto, fa4, fa3, fa2, torch_varlen, '
                                    'flex, sdpa_dense, sdpa_njt, eager (seqpack.attention.BACKENDS)')
    loss_chunk: int = opt(0, 'tokens per chunk of the fused head+cross-entropy (0: plain logits)', ge=0)
    fused_rope_norm: bool | None = opt(None, 'RoPE + QK norm as one autograd function (same function; less memory '
                                             'traffic)')
    fused_qkv: bool | None = opt(None, 'q, k, v from one matmul over the concatenated weights (same parameters)')
    residual: str | None = opt(None, 'residual stream under autocast: fp32 (default) or autocast (bf16: less traffic,'
                                     ' numerics change)', choices=('fp32', 'autocast'))
    # data
    data: str = opt("chitchat", 'chitchat (bundled), a Parquet path from `seqpack pack`, or hf:NAME[:SPLIT[:COLUMN]]')
    max_docs: int | None = opt(None, 'use only the first N documents of the corpus (a corpus cut; not a per-row '
                                     'limit: rows hold as many pieces as fit, and --max-num-docs sizes cu_seqlens)',
                                 ge=1)
    capacity: int = opt(1024, 'tokens per packed row', ge=1)
    rows_per_step: int = opt(8, 'rows per optimiser step over all ranks (tokens per step = rows x capacity)', ge=1)
    rows_per_micro: int | None = opt(None, 'rows per micro-batch per rank (packed/naive); None = all', ge=1)
    loader: str = opt("offline", 'offline: plan the whole corpus once (global best fit); online: pack while reading '
                                 '(seqpack.data.online, rank-balanced attention work)', choices=('offline', 'online'))
    mode: str = opt("packed", 'packed (block-diagonal), naive (packed rows, cross-document attention), padded (one '
                              'doc per row)', choices=('packed', 'naive', 'padded'))
    layout: str = opt("auto", 'packed mode: 1d buffer (varlen style) or rows; auto = 1d on GPU, rows on CPU (where '
                              'the dense-mask backend pays for the band a 1D buffer needs)',
                      choices=('auto', '1d', 'rows'))
    pad_batch: int = opt(8, 'padded mode: documents per micro-batch', ge=1)
    pad_multiple: int | None = opt(None, 'padded mode: pad each micro-batch to its longest document rounded up to '
                                         'this multiple; 0 = power-of-two buckets (few shapes); default: 0 when '
                                         'compiled, 8 eager', ge=0)
    max_num_docs: int | None = opt(None, "packed mode: fixed number of segments (pieces and padding runs) in each "
                                         "micro-batch's cu_seqlens, for static shapes; None = from the plan", ge=1)
    strategy: str = opt("bfd", "offline loader: the planner's strategy (seqpack.plan_packing)",
                        choices=('bfd', 'ffd', 'nextfit', 'wrapped'))
    seed: int = opt(0, "seed of the weights, the plan's bin order and the epoch shuffles", ge=0)
    # optimisation
    steps: int = opt(200, 'optimiser steps in total', ge=1)
    lr: float = opt(3e-3, 'peak learning rate (AdamW)', gt=0)
    min_lr_frac: float = opt(0.1, 'the cosine decay ends at this fraction of --lr', ge=0, le=1)
    warmup_steps: int = opt(20, 'linear warm-up steps', ge=0)
    weight_decay: float = opt(0.1, 'AdamW weight decay (matrices only)', ge=0)
    beta1: float = opt(0.9, 'AdamW beta1', ge=0, lt=1)
    beta2: float = opt(0.95, 'AdamW beta2', ge=0, lt=1)
    grad_clip: float = opt(1.0, 'clip the gradient norm to this (0: no clipping)', ge=0)
    # system
    device: str = opt("auto", 'auto (cuda if available), cpu, cuda, cuda:N')
    dtype: str = opt("auto", 'auto | bf16 | fp32 (bf16 = autocast, parameters stay fp32)',
                     choices=('auto', 'bf16', 'fp32'))
    compile: str = opt("auto", 'torch.compile(fullgraph=True, dynamic=False) of the whole model, of each block, or '
                               'none', choices=('auto', 'none', 'model', 'blocks'))
    compile_backend: str = opt("inductor", 'torch.compile backend (tests use aot_eager: same graphs, no codegen)')
    compile_mode: str | None = opt(None, 'torch.compile mode for inductor (default, reduce-overhead = CUDA graphs, '
                                         'max-autotune-no-cudagraphs, ...)')
    inductor: str | None = opt(None, 'inductor options, comma-separated key=value (e.g. coordinate_descent_tuning=1)')
    dist: str = opt("auto", 'distributed: none, ddp or fsdp (FSDP2); auto = ddp under torchrun',
                    choices=('auto', 'none', 'ddp', 'fsdp'))
    cp: int = opt(1, "context parallel size: each micro-batch's tokens are split over this many ranks (Ulysses "
                     "attention over the whole batch, exact); the other ranks are data parallel (world = dp x cp); "
                     "needs torchrun", ge=1)
    ddp_bucket_mb: int = opt(25, 'DDP gradient bucket size in MiB (all-reduce granularity)', ge=1)
    ddp_split_graphs: bool = opt(False, "DDP + torch.compile: split compiled graphs at gradient-bucket boundaries so "
                                        "all-reduce starts inside a block's backward (dynamo's optimize_ddp, torch's "
                                        "default); false (seqpack's default) keeps each compiled block whole: 97%% "
                                        "DDP scaling instead of 90%% on 2 H200s (docs/bench/train.md)")
    threads: int | None = opt(None, 'CPU threads (torch.set_num_threads)', ge=1)
    # output
    out: str = opt("seqpack-out/train", 'output directory (log, checkpoints)')
    ckpt_every: int = opt(0, 'save a checkpoint every N steps (0: only at the end)', ge=0)
    resume: str | None = opt(None, "checkpoint file to resume from, or 'auto' for the latest in --out")
    log_every: int = opt(10, 'log every N steps', ge=1)
    progress: bool = opt(True, 'show a progress bar')
    peak_tflops: float | None = opt(None, 'peak TFLOP/s of one device for MFU (default: known GPUs, none on CPU)', gt=0)
    save: bool = opt(True, 'write a checkpoint at the end')

    def model_overrides(self) -> dict:
        keys = ("n_layer", "n_head", "n_kv_head", "n_embd", "window", "window_pattern", "tie_embeddings",
                "positions", "attn_backend", "loss_chunk", "fused_rope_norm", "fused_qkv", "residual")
        return {k: getattr(self, k) for k in keys}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        """Refuse impossible values (`InputError` naming the field): the same rules the
        command line applies to each flag while parsing."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise InputError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
            why = _out_of_range(f, value)
            if why:
                raise InputError(f"{f.name} {why}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out)



def _out_of_range(f: dataclasses.Field, value) -> str | None:
    """Why ``value`` is impossible for field ``f`` ("must be >= 1, got 0"), or None."""
    m = f.metadata
    low_in, high_in = m.get("ge") is not None, m.get("le") is not None
    low = m.get("ge") if low_in else m.get("gt")
    high = m.get("le") if high_in else m.get("lt")
    if low is None or isinstance(value, bool):  # every range here has a lower bound
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    below = value < low if low_in else value <= low
    above = high is not None and (value > high if high_in else value >= high)
    if below or above:
        rule = f">= {low}" if low_in else f"> {low}"
        if high is not None:
            rule = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        return f"must be {rule}, got {value}"
    return None


def _checked(typ, f: dataclasses.Field):
    """An argparse ``type=`` that converts and then applies the field's range rule, so an
    impossible value is refused while parsing, naming the flag."""
    def convert(text: str):
        value = typ(text)
        why = _out_of_range(f, value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    convert.__name__ = typ.__name__  # argparse names the type in "invalid int value"
    return convert


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """One ``--flag`` per `TrainConfig` field (underscores become dashes)."""
    defaults = defaults or TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind.startswith("bool"):
            typ = _parse_bool
        elif kind.startswith("int"):
            typ = int
        elif kind.startswith("float"):
            typ = float
        else:
            typ = str
        help_, choices = f.metadata.get("help", ""), f.metadata.get("choices")
        parser.add_argument(flag, dest=f.name, type=_checked(typ, f), default=default, choices=choices,
                            metavar=None if choices else f.name.upper(),
                            help=f"{help_} (default: {default})".strip())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    return cfg.validate()


def _coerce(key: str, text: str, current):
    """An option's text as the type of its current value."""
    low = text.strip().lower()
    if isinstance(current, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InputError(f"inductor option {key} is a bool; got {text!r}")
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise InputError(f"inductor option {key} is a {type(current).__name__}; got {text!r}") from None
    if current is None:
        for conv in (int, float):
            try:
                return conv(text)
            except ValueError:
                pass
        if low in ("true", "false"):
            return low == "true"
    return text


def parse_inductor_options(text: str | None) -> dict:
    """``"coordinate_descent_tuning=1,triton.cudagraphs=0"`` -> a dict for
    ``torch.compile(options=...)``, each value of the type inductor's config has."""
    if not text:
        return {}
    import torch._inductor.config as ic

    current = ic.get_config_copy()
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise InputError(f"--inductor options are key=value; got {item!r}")
        key, value = (x.strip() for x in item.split("=", 1))
        if key not in current:
            raise InputError(f"unknown inductor option {key!r} in --inductor (see torch._inductor.config)")
        out[key] = _coerce(key, value, current[key])
    return out


def uses_cudagraphs(cfg: TrainConfig) -> bool:
    """Whether the compiled graphs are CUDA graphs (mode reduce-overhead / max-autotune, or
    inductor option triton.cudagraphs=1): each training step must then tell inductor where it
    begins (``torch.compiler.cudagraph_mark_step_begin``)."""
    return bool(compile_kwargs(cfg).get("options", {}).get("triton.cudagraphs", False))


def compile_kwargs(cfg: TrainConfig) -> dict:
    """``torch.compile`` arguments: fullgraph, static shapes, and the inductor mode/options.

    torch.compile takes a mode or options, not both: a mode is expanded into its options
    (``torch._inductor.list_mode_options``) and the explicit options override them."""
    kw = dict(fullgraph=True, dynamic=False, backend=cfg.compile_backend)
    opts = parse_inductor_options(cfg.inductor)
    if cfg.compile_backend != "inductor":
        if cfg.compile_mode or opts:
            raise InputError("--compile-mode and --inductor apply to the inductor backend only")
        return kw
    if cfg.compile_mode and cfg.compile_mode != "default":
        import torch._inductor

        opts = {**torch._inductor.list_mode_options(cfg.compile_mode, dynamic=False), **opts}
    if opts:
        kw["options"] = opts
    return kw
