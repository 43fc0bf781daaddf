"""The training configuration: one dataclass, every field a ``seqpack train`` flag.

Notable:
- Model fields left at None take the preset's value (`seqpack.model.PRESETS`).
- ``rows_per_step x capacity`` is the number of token slots per optimiser step over all
  ranks (32K for the REFERENCE benchmark: 8 rows of 4,096).
- ``"auto"`` values resolve at start-up: device (cuda if available), dtype (bf16 autocast
  on GPU, float32 on CPU), compile (whole model on GPU, off on CPU), dist (from torchrun's
  environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

from seqpack.errors import InputError

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args", "parse_inductor_options", "compile_kwargs",
           "uses_cudagraphs"]


@dataclass
class TrainConfig:
    # model
    preset: str = "tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    window: int | None = None
    window_pattern: str | None = None
    tie_embeddings: bool | None = None
    positions: str = "doc"
    attn_backend: str = "auto"
    loss_chunk: int = 0
    fused_rope_norm: bool | None = None  # throughput options of the model (GPTConfig); None = its default
    fused_qkv: bool | None = None
    residual: str | None = None
    # data
    data: str = "chitchat"           # "chitchat", a Parquet file/folder from `seqpack pack`, or "hf:NAME[:SPLIT[:COLUMN]]"
    max_docs: int | None = None      # use only the first documents of the corpus
    capacity: int = 1024             # tokens per row
    rows_per_step: int = 8           # rows per optimiser step, all ranks together
    rows_per_micro: int | None = None  # rows per micro-batch per rank (packed/naive); None = all
    loader: str = "offline"          # offline: plan the corpus once; online: the data stage's stream packer
    mode: str = "packed"             # packed | naive | padded
    layout: str = "auto"             # packed mode: 1d buffer, rows, or auto (1d on GPU, rows on CPU)
    pad_batch: int = 8               # padded mode: documents per micro-batch
    pad_multiple: int | None = None  # padded mode: pad to longest rounded to this; 0 = power of two; None = auto
    max_num_docs: int | None = None  # packed mode: static cu_seqlens size; None = from the plan
    strategy: str = "bfd"
    seed: int = 0
    # optimisation
    steps: int = 200
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # system
    device: str = "auto"
    dtype: str = "auto"              # auto | bf16 | fp32 (bf16 = autocast, parameters stay fp32)
    compile: str = "auto"            # auto | none | model | blocks
    compile_backend: str = "inductor"  # torch.compile backend (tests use aot_eager: same graphs, no codegen)
    compile_mode: str | None = None  # torch.compile mode (inductor), e.g. max-autotune-no-cudagraphs
    inductor: str | None = None      # inductor options "key=value,key=value" (torch._inductor.config names)
    dist: str = "auto"               # auto | none | ddp | fsdp
    cp: int = 1                      # context parallel size: each micro-batch's tokens split over cp ranks
    ddp_bucket_mb: int = 25          # DDP gradient bucket size (MiB); torch's default is 25
    ddp_split_graphs: bool = False   # dynamo's DDPOptimizer (torch's default: on); off measured faster
    threads: int | None = None       # CPU threads (torch.set_num_threads)
    # output
    out: str = "seqpack-out/train"
    ckpt_every: int = 0              # 0: only at the end
    resume: str | None = None        # a checkpoint path, or "auto" = latest in out/
    log_every: int = 10
    progress: bool = True
    peak_tflops: float | None = None
    save: bool = True                # write a checkpoint at the end

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
            if f.name in _CHOICES and value not in _CHOICES[f.name]:
                raise InputError(f"{f.name} must be one of {', '.join(_CHOICES[f.name])}; got {value!r}")
            why = _out_of_range(f.name, value)
            if why:
                raise InputError(f"{f.name} {why}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


_HELP = {
    "preset": "model size: tiny, mini, small, 124M, 304M",
    "positions": "doc: RoPE positions restart per document; buffer: run over the row/buffer",
    "attn_backend": "varlen_attention backend for packed mode: auto, fa4, fa3, fa2, torch_varlen, flex, "
                    "sdpa_dense, sdpa_njt, eager (seqpack.attention.BACKENDS)",
    "loss_chunk": "tokens per chunk of the fused head+cross-entropy (0: plain logits)",
    "fused_rope_norm": "RoPE + QK norm as one autograd function (same function; less memory traffic)",
    "fused_qkv": "q, k, v from one matmul over the concatenated weights (same parameters)",
    "residual": "residual stream under autocast: fp32 (default) or autocast (bf16: less traffic, numerics change)",
    "data": "chitchat (bundled), a Parquet path from `seqpack pack`, or hf:NAME[:SPLIT[:COLUMN]]",
    "capacity": "tokens per packed row",
    "rows_per_step": "rows per optimiser step over all ranks (tokens per step = rows x capacity)",
    "loader": "offline: plan the whole corpus once (global best fit); online: pack while reading "
              "(seqpack.data.online, rank-balanced attention work)",
    "mode": "packed (block-diagonal), naive (packed rows, cross-document attention), padded (one doc per row)",
    "layout": "packed mode: 1d buffer (varlen style) or rows; auto = 1d on GPU, rows on CPU (where the dense-mask "
              "backend pays for the band a 1D buffer needs)",
    "pad_batch": "padded mode: documents per micro-batch",
    "pad_multiple": "padded mode: pad each micro-batch to its longest document rounded up to this multiple; "
                    "0 = power-of-two buckets (few shapes); default: 0 when compiled, 8 eager",
    "max_num_docs": "packed mode: fixed number of segments in cu_seqlens (static shapes)",
    "compile": "torch.compile(fullgraph=True, dynamic=False) of the whole model, of each block, or none",
    "compile_mode": "torch.compile mode for inductor (default, reduce-overhead = CUDA graphs, "
                    "max-autotune-no-cudagraphs, ...)",
    "inductor": "inductor options, comma-separated key=value (e.g. coordinate_descent_tuning=1)",
    "dist": "distributed: none, ddp or fsdp (FSDP2); auto = ddp under torchrun",
    "cp": "context parallel size: each micro-batch's tokens are split over this many ranks (Ulysses attention over "
          "the whole batch, exact); the other ranks are data parallel (world = dp x cp); needs torchrun",
    "ddp_bucket_mb": "DDP gradient bucket size in MiB (all-reduce granularity)",
    "ddp_split_graphs": "DDP + torch.compile: split compiled graphs at gradient-bucket boundaries so all-reduce "
                        "starts inside a block's backward (dynamo's optimize_ddp, torch's default); false (seqpack's default) "
                        "keeps each compiled block whole: 97%% DDP scaling instead of 90%% on 2 H200s "
                        "(docs/bench/train.md)",
    "resume": "checkpoint file to resume from, or 'auto' for the latest in --out",
    "ckpt_every": "save a checkpoint every N steps (0: only at the end)",
    "peak_tflops": "peak TFLOP/s of one device for MFU (default: known GPUs, none on CPU)",
}

_CHOICES = {"loader": ("offline", "online"), "mode": ("packed", "naive", "padded"), "residual": ("fp32", "autocast"),
            "layout": ("auto", "1d", "rows"), "positions": ("doc", "buffer"),
            "compile": ("auto", "none", "model", "blocks"), "dist": ("auto", "none", "ddp", "fsdp"),
            "dtype": ("auto", "bf16", "fp32"), "strategy": ("bfd", "ffd", "nextfit", "wrapped")}


# allowed ranges: (lowest, highest, whether each bound itself is allowed); None = unbounded
_RANGES = {
    **{k: (1, None, True, True) for k in ("n_layer", "n_head", "n_kv_head", "n_embd", "window", "max_docs", "capacity",
                                     "rows_per_step", "rows_per_micro", "max_num_docs", "pad_batch", "steps",
                                     "log_every", "threads", "ddp_bucket_mb", "cp")},
    **{k: (0, None, True, True) for k in ("loss_chunk", "warmup_steps", "ckpt_every", "pad_multiple", "seed",
                                     "weight_decay", "grad_clip")},
    "lr": (0, None, False, True), "peak_tflops": (0, None, False, True), "min_lr_frac": (0, 1, True, True),
    "beta1": (0, 1, True, False), "beta2": (0, 1, True, False),
}


def _out_of_range(name: str, value) -> str | None:
    """Why ``value`` is impossible for field ``name`` ("must be >= 1, got 0"), or None."""
    if name not in _RANGES or isinstance(value, bool):
        return None
    low, high, low_in, high_in = _RANGES[name]
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


def _checked(typ, name: str):
    """An argparse ``type=`` that converts and then applies the field's range rule, so an
    impossible value is refused while parsing, naming the flag."""
    def convert(text: str):
        value = typ(text)
        why = _out_of_range(name, value)
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
        help_ = _HELP.get(f.name, "")
        parser.add_argument(flag, dest=f.name, type=_checked(typ, f.name), default=default, choices=_CHOICES.get(f.name),
                            metavar=None if f.name in _CHOICES else f.name.upper(),
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
