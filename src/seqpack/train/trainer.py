"""The training loop: set-up, one optimiser step, checkpoints, logs.

Notable:
- The loss of a step is the sum of token losses over every micro-batch and every rank,
  divided by the step's label tokens over all ranks (one all-reduce of a count before
  the first backward). So a packed step, a padded step accumulated over micro-batches and
  a 2-rank step all compute the same gradient for the same documents.
- The divisor is a device tensor and the micro-batches have static shapes: the compiled
  model (``fullgraph=True, dynamic=False``) sees the same graph every step.
- Logs sync with the device only every ``log_every`` steps; useful tokens/s and MFU are
  measured over those windows, after the first step (compilation, warm-up) is done.
- Context parallelism (``cp > 1``, `seqpack.parallel`): the ranks form a (dp, cp) mesh, the
  loader splits the data by dp, each rank of a cp group keeps its piece of every micro-batch
  and attention runs over the whole one; the loss and its divisor above are unchanged.
- Checkpoints hold the model, optimizer, loader ``(epoch, step)``, step counter and loss
  history: a resumed run computes bit for bit the same losses as an uninterrupted one
  (on CPU; on GPU up to non-deterministic kernels).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from seqpack.attention.base import BackendUnavailable
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX
from seqpack.model import GPT, gpt_config
from seqpack.model.gpt import prepare_context
from seqpack.train.config import TrainConfig, compile_kwargs, uses_cudagraphs
from seqpack.train.data import OnlineLoader, PackedLoader, StepBatch
from seqpack.train.dist import all_reduce_sum, init_distributed
from seqpack.train.metrics import peak_flops, step_flops

__all__ = ["Trainer", "lr_at"]


# ----------------------------------------------------------------------------------------
# small pure helpers


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac x lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Vocabulary rounded up to a multiple of 64 (GPT-2's 50,257 -> 50,304): faster matmuls."""
    return -(-vocab_size // multiple) * multiple


# ----------------------------------------------------------------------------------------


class Trainer:
    """``Trainer(cfg).run()`` trains and returns a summary dict.

    ``docs`` (a `Documents` store) and ``vocab_size`` override ``cfg.data`` (tests, demo).
    ``data_options``: what the caller did to the documents beyond ``cfg`` (the command
    line's ``--vocab``), recorded in checkpoints so that a resume with other data refuses.
    Impossible options and a resume that would change which documents go where raise
    `InputError` naming the option.
    """

    # options that decide which documents each step trains on (any loader), and those that
    # also decide it for the online packer (they shape its batches)
    DATA_OPTIONS = ("data", "max_docs", "loader", "capacity", "rows_per_step", "seed", "cp")  # cp: data split by dp
    OFFLINE_OPTIONS = ("strategy",)
    ONLINE_OPTIONS = ("rows_per_micro", "mode", "layout", "max_num_docs")

    def __init__(self, cfg: TrainConfig, *, docs=None, vocab_size: int | None = None, plan=None,
                 data_options: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.extra_data_options = dict(data_options or {})
        self.dist, self.device = init_distributed(cfg.dist, cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if docs is None:
            from seqpack.data.load import load_documents

            docs, vocab_size, stored = load_documents(cfg.data, cfg.max_docs)
            plan = stored if stored is not None else plan
        if plan is not None and plan.capacity != cfg.capacity:
            cfg = self.cfg = cfg.replace(capacity=plan.capacity)  # stored rows fix the capacity
        self.docs = docs
        self.use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        try:
            self.model_config = gpt_config(cfg.preset, vocab_size=pad_vocab(vocab_size or 50257),
                                           **cfg.model_overrides())
        except (ValueError, TypeError) as e:  # GPTConfig checks its fields (head sizes, patterns)
            raise InputError(f"model options: {e}") from None
        from seqpack.attention import BACKEND_ALIASES, BACKENDS

        if cfg.attn_backend != "auto" and cfg.attn_backend not in BACKENDS and cfg.attn_backend not in BACKEND_ALIASES:
            raise InputError(f"--attn-backend {cfg.attn_backend!r} is not a backend; known: "
                             f"{', '.join(BACKENDS)}, {', '.join(BACKEND_ALIASES)} or auto")
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = GPT(self.model_config).to(self.device)
        self.num_params = self.model.num_params()
        self.cp, dp_rank, dp = self._context_parallel()  # cp None: no context parallelism
        layout = cfg.layout if cfg.layout != "auto" else ("1d" if self.device.type == "cuda" else "rows")
        self.layout = layout
        common = dict(capacity=cfg.capacity, rows_per_step=cfg.rows_per_step, mode=cfg.mode, layout=layout,
                      rows_per_micro=cfg.rows_per_micro, pad_batch=cfg.pad_batch, pad_multiple=self._pad_multiple(),
                      max_num_docs=cfg.max_num_docs, seed=cfg.seed, rank=dp_rank, world=dp)
        if cfg.loader == "online":
            self.loader = OnlineLoader(docs, **common)
        else:
            self.loader = PackedLoader(docs, strategy=cfg.strategy, plan=plan, **common)
        self.forward = self._wrap_model()
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.history: list[float] = []      # mean loss of every step
        self.wall: list[float] = []         # seconds since the run started, at the end of every step
        self.peak = peak_flops(self.device, cfg.peak_tflops)
        # throughput over every timed window of every run() call (the first step is not timed)
        self.totals = dict(useful=0, slots=0, docs=0, rows=0, flops=0, seconds=0.0, steps=0)
        if cfg.resume:
            self.load(self._resolve_resume(cfg.resume))

    # ------------------------------------------------------------------ set-up

    def _context_parallel(self):
        """``(ContextParallel or None, data-parallel rank, data-parallel size)`` for ``cfg.cp``:
        a (dp, cp) mesh over the ranks; the data is split by dp only."""
        cp = self.cfg.cp
        if cp == 1:
            return None, self.dist.rank, self.dist.world
        from seqpack.parallel import ContextParallel, init_mesh

        if not self.dist.enabled:
            raise InputError(f"--cp {cp} splits each micro-batch over {cp} processes: run under torchrun with a "
                             f"multiple of {cp} processes (torchrun --nproc_per_node {cp} -m seqpack.cli train ... "
                             f"--cp {cp}) and --dist ddp or fsdp")
        self.mesh = init_mesh(cp, device_type=self.device.type)
        ctx = ContextParallel(self.mesh)
        ctx.check_heads(self.model_config.n_head, self.model_config.n_kv_head)
        return ctx, self.mesh.get_local_rank("dp"), self.mesh.size(0)

    def _pad_multiple(self) -> int:
        """Padded rows: power-of-two lengths when compiled (each shape compiles once), else
        the longest document of the micro-batch rounded up to 8 (HF's pad_to_multiple_of)."""
        if self.cfg.pad_multiple is not None:
            return self.cfg.pad_multiple
        return 0 if self._compile_kind() != "none" else 8

    def _compile_kind(self) -> str:
        kind = self.cfg.compile
        if kind == "auto":
            kind = "model" if self.device.type == "cuda" else "none"
        if kind == "model" and self.dist.kind == "fsdp" and self.dist.enabled:
            kind = "blocks"  # FSDP2 hooks sit between blocks: compile each block (torchtitan's way)
        return kind

    def _wrap_model(self):
        """Compile and/or shard the model; returns the callable used for forward passes."""
        model, kind = self.model, self._compile_kind()
        compile_kw = compile_kwargs(self.cfg)
        self.cudagraphs = kind != "none" and uses_cudagraphs(self.cfg)
        if self.cudagraphs and self.dist.enabled:
            raise InputError(f"compile_mode={self.cfg.compile_mode!r} / inductor={self.cfg.inductor!r} asks for "
                             "CUDA graphs, which seqpack supports in single-process runs only (DDP/FSDP hooks "
                             "run between graphs); use the default mode or max-autotune-no-cudagraphs")
        if kind != "none":
            raise_recompile_limit()
        if kind == "blocks":
            for block in model.blocks:
                block.compile(**compile_kw)
            model.compile_loss(**compile_kw)
        if self.dist.enabled and self.dist.kind == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # under cp, over the flattened dp x cp mesh (every rank holds a shard), as torchtitan does
            kw = {} if self.cp is None else {"mesh": self.mesh["dp", "cp"]._flatten("dp_cp")}
            for block in model.blocks:
                fully_shard(block, **kw)
            fully_shard(model, **kw)
            return model
        fwd = torch.compile(model, **compile_kw) if kind == "model" else model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if kind != "none":
                # process-wide dynamo setting, read when a graph compiles under DDP's forward
                torch._dynamo.config.optimize_ddp = self.cfg.ddp_split_graphs
            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = DDP(fwd, device_ids=ids, bucket_cap_mb=self.cfg.ddp_bucket_mb)
        return fwd

    def recompile(self, **changes) -> None:
        """Compile again with changed compile settings (``compile``, ``compile_mode``,
        ``inductor``), keeping the weights and the optimizer: e.g. compare compile modes on
        one model. Drops every compiled graph (``torch._dynamo.reset``) and the per-block
        compiled calls ``nn.Module.compile`` installed (it has no public undo), then wraps
        the model anew. Single process only: DDP and FSDP wrap a model once."""
        if self.dist.enabled:
            raise RuntimeError("recompile is for single-process runs (DDP/FSDP wrap the model once)")
        self.cfg = self.cfg.replace(**changes)
        torch._dynamo.reset()
        for block in self.model.blocks:
            block._compiled_call_impl = None  # undo nn.Module.compile
        self.model.__dict__.pop("_head_loss", None)  # undo compile_loss
        self.forward = self._wrap_model()

    def _make_optimizer(self):
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": other, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        fused = self.device.type == "cuda" and not (self.dist.enabled and self.dist.kind == "fsdp")
        kw = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), **kw)

    def _sync_context(self, last: bool):
        """No gradient all-reduce until the last micro-batch of a step."""
        fwd = self.forward
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if self.dist.kind == "fsdp":
            fwd.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else fwd.no_sync()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: StepBatch) -> torch.Tensor:
        """One optimiser step; returns the step's mean loss over all ranks (a device tensor).

        No host sync: inputs are copied from pinned memory, the label count is summed on
        the device, and the attention context is prepared from host-side boundaries.
        """
        dev = self.device
        cuda = dev.type == "cuda"
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
        inputs = []
        for mb in batch.micro:
            if self.cp is not None:  # this rank's piece of the micro-batch; the boundaries stay whole
                mb = self.cp.shard_batch(mb)
            ids, labels, pos, bounds = mb.input_ids, mb.labels, mb.position_ids, mb.boundaries
            if cuda:  # from pageable memory a copy to the GPU first waits for all queued work
                ids, labels, pos = ids.pin_memory(), labels.pin_memory(), pos.pin_memory()
                bounds = bounds.pin_memory()
            ctx = prepare_context(bounds, self.model_config, dev)  # once for all layers
            if self.cp is not None:
                ctx = self.cp.context(ctx)
            mv = lambda t: t.to(dev, non_blocking=True)  # noqa: E731
            inputs.append((mv(ids), mv(labels), ctx, mv(pos)))
        count = sum((labels != IGNORE_INDEX).sum() for _, labels, _, _ in inputs).to(torch.float32)
        all_reduce_sum(count, self.dist)
        scale = self.dist.world / count.clamp(min=1)  # DDP/FSDP average over ranks: undo it
        loss_sum = torch.zeros((), device=dev)
        n = len(inputs)
        for i, (ids, labels, ctx, pos) in enumerate(inputs):
            with self._sync_context(i == n - 1), self.autocast():
                loss, _ = self.forward(ids, labels, boundaries=ctx, position_ids=pos)
            (loss * scale).backward()
            loss_sum += loss.detach()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return all_reduce_sum(loss_sum, self.dist) / count.clamp(min=1)

    # ------------------------------------------------------------------ the loop

    def run(self, steps: int | None = None, *, on_log=None) -> dict:
        """Train until ``steps`` (default ``cfg.steps``) optimiser steps are done in total.

        May be called repeatedly with growing ``steps`` (the demo interleaves modes this
        way); the summary covers every call since the start (or the resumed step).
        """
        cfg = self.cfg
        end = cfg.steps if steps is None else steps
        main = self.dist.is_main
        bar = None
        if cfg.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc=f"train {cfg.mode}", unit="step", dynamic_ncols=True)
        log_path = cfg.out_dir / "log.jsonl"
        if main:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
            if self.step == 0 and log_path.exists():
                log_path.unlink()  # a fresh run starts a fresh log; a resumed one appends
            elif self.step > 0 and log_path.exists():
                _trim_log(log_path, self.step)  # steps after the checkpoint are trained again
        pending: list[torch.Tensor] = []
        window = dict(useful=0, slots=0, docs=0, rows=0, flops=0, steps=0)
        totals = self.totals
        t_start = time.perf_counter() - (self.wall[-1] if self.wall else 0.0)
        t_window = time.perf_counter()
        first = self.step
        last_log: dict = {}
        while self.step < end:
            batch = next(self.loader)
            try:
                loss = self.train_step(batch)
            except BackendUnavailable as e:  # a named backend that cannot run here: bad input
                raise InputError(f"--attn-backend {cfg.attn_backend}: {e}") from None
            pending.append(loss)
            self.wall.append(time.perf_counter() - t_start)
            w = window  # this rank's counts; summed over ranks when logged
            w["useful"] += batch.useful_tokens
            w["slots"] += batch.slots
            w["docs"] += batch.docs
            w["rows"] += batch.rows
            w["flops"] += step_flops(self.num_params, batch.useful_tokens, batch.piece_lengths, self.model_config)
            w["steps"] += 1
            done = self.step >= end
            if self.step - first == 1 or self.step % cfg.log_every == 0 or done:
                if dev_is_cuda(self.device):
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                if self.dist.enabled:
                    keys = ("useful", "slots", "docs", "rows", "flops")
                    t = torch.tensor([float(w[k]) for k in keys], dtype=torch.float64, device=self.device)
                    all_reduce_sum(t, self.dist)
                    t /= self.cfg.cp  # the ranks of a cp group count the same micro-batches
                    w.update(zip(keys, t.tolist()))
                self.history.extend(float(x) for x in torch.stack(pending).tolist())
                pending = []
                dt = now - t_window
                stats = dict(step=self.step, loss=self.history[-1], lr=lr_at(self.step - 1, cfg),
                             tok_s=w["useful"] / dt, fill=w["useful"] / max(w["slots"], 1),
                             docs_per_row=w["docs"] / max(w["rows"], 1), seconds=dt)
                stats["mfu"] = (w["flops"] / dt / (self.peak * self.dist.world)) if self.peak else None
                if self.step > 1:  # the first step compiles and warms up: not timed
                    for k in ("useful", "slots", "docs", "rows", "flops", "steps"):
                        totals[k] += w[k]
                    totals["seconds"] += dt
                last_log = stats
                if main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(stats) + "\n")
                    if bar is not None:
                        bar.set_postfix_str(_postfix(stats))
                    if on_log is not None:
                        on_log(stats)
                window = dict(useful=0, slots=0, docs=0, rows=0, flops=0, steps=0)
                t_window = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and not done:
                self.save()
        if bar is not None:
            bar.close()
        if cfg.save and end > first:
            self.save()
        secs = totals["seconds"]
        summary = dict(mode=cfg.mode, steps=self.step, loss=self.history[-1] if self.history else None,
                       tok_s=totals["useful"] / secs if secs else last_log.get("tok_s"),
                       fill=totals["useful"] / max(totals["slots"], 1) if totals["slots"] else last_log.get("fill"),
                       docs_per_row=totals["docs"] / max(totals["rows"], 1) if totals["rows"] else None,
                       mfu=(totals["flops"] / secs / (self.peak * self.dist.world)) if (self.peak and secs) else None,
                       wall=self.wall[-1] if self.wall else 0.0, params=self.num_params,
                       history=list(self.history), wall_history=list(self.wall))
        return summary

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        if self.dist.enabled and self.dist.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        return {"model": model_sd, "optimizer": optim_sd, "loader": self.loader.state_dict(), "step": self.step,
                "history": self.history, "wall": self.wall, "config": asdict(self.cfg),
                "model_config": self.model_config.to_dict(), "world": self.dist.world,
                "data_options": self.data_options()}

    def data_options(self) -> dict:
        """What decides which documents each step trains on: the options (resolved, e.g.
        the layout), the caller's `data_options` and a fingerprint of the documents."""
        cfg = self.cfg
        names = self.DATA_OPTIONS + (self.ONLINE_OPTIONS if cfg.loader == "online" else self.OFFLINE_OPTIONS)
        out = {k: getattr(cfg, k) for k in names}
        if cfg.loader == "online":
            out.update(rows_per_micro=self.loader.rows_per_micro, max_num_docs=self.loader.max_num_docs,
                       layout=self.layout if cfg.mode == "packed" else "rows")
        out.update(self.extra_data_options)
        if getattr(self, "_docs_fingerprint", None) is None:
            d = self.docs
            h = hashlib.sha1(np.ascontiguousarray(d.offsets).tobytes())
            h.update(str(int(d.tokens.sum(dtype=np.int64))).encode())
            self._docs_fingerprint = f"{len(d):,} documents, {d.tokens.size:,} tokens, checksum {h.hexdigest()[:12]}"
        out["documents"] = self._docs_fingerprint
        return out

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a checkpoint (rank 0) to ``path`` or ``out/ckpt/step_XXXXXX.pt``."""
        state = self.state_dict()  # collective under FSDP: every rank calls it
        if not self.dist.is_main:
            return None
        path = Path(path) if path else self.cfg.out_dir / "ckpt" / f"step_{self.step:06d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
        (path.parent / "latest").write_text(path.name)
        return path

    def _resolve_resume(self, resume: str) -> Path:
        if resume != "auto":
            return Path(resume)
        ckpt = self.cfg.out_dir / "ckpt"
        latest = ckpt / "latest"
        if not latest.exists():
            raise InputError(f"--resume auto: no checkpoint in {ckpt} (train without --resume first, or name "
                             f"a checkpoint file)")
        return ckpt / latest.read_text().strip()

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint; refuses (`InputError`) one whose data, data options,
        model or world size differ from this run's, naming each with both values."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except OSError:
            raise
        except Exception as e:
            raise InputError(f"--resume {path}: not a readable seqpack checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or not {"model", "optimizer", "loader", "step", "config"} <= set(state):
            raise InputError(f"--resume {path}: not a seqpack training checkpoint")
        if state["world"] != self.dist.world:
            raise InputError(f"--resume {path}: the checkpoint was written by {state['world']} ranks; this run has "
                             f"{self.dist.world}: the data slices would differ; resume with {state['world']} ranks")
        self._check_resume(path, state)
        if self.dist.enabled and self.dist.kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]
        self.history = list(state["history"])
        self.wall = list(state.get("wall", []))


    def _check_resume(self, path, state: dict) -> None:
        """Refuse a resume whose options would change which documents go where (the
        resumed run would repeat some and never show others) or another model."""
        saved = state.get("data_options")
        if saved is None:  # an older checkpoint: compare what its config holds
            names = self.DATA_OPTIONS + (self.ONLINE_OPTIONS if self.cfg.loader == "online" else self.OFFLINE_OPTIONS)
            saved = {k: state["config"].get(k) for k in names if k in state["config"]}
            saved.setdefault("cp", 1)  # checkpoints from before --cp
            mine = {k: v for k, v in self.data_options().items() if k in saved}
        else:
            saved = {"cp": 1, **saved}  # checkpoints from before --cp
            mine = self.data_options()
        diff = [(k, saved.get(k), v) for k, v in mine.items() if saved.get(k) != v]
        if diff:
            parts = [f"{_flag(k)}: saved {a!r}, given {b!r}" for k, a, b in diff]
            raise InputError(f"--resume {path}: options that decide which documents each step trains on differ "
                             f"from the checkpoint's ({'; '.join(parts)}); resume with the saved values, or start "
                             f"a fresh run in another --out")
        model = self.model_config.to_dict()
        mdiff = [f"{k}: saved {v!r}, given {model.get(k)!r}" for k, v in state["model_config"].items()
                 if model.get(k) != v]
        if mdiff:
            raise InputError(f"--resume {path}: the model differs from the checkpoint's ({'; '.join(mdiff)}); "
                             f"resume with the same --preset and model options")


def _flag(name: str) -> str:
    return name if name == "documents" else "--" + name.replace("_", "-")


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to ``step`` (the resumed checkpoint's): the steps
    after it are trained again and logged anew, so none appears twice. Written to a
    temporary file and renamed, so a crash never leaves half a log."""
    keep = []
    for line in path.read_text().splitlines():
        try:
            logged = json.loads(line).get("step")
        except (ValueError, AttributeError):
            logged = None
        if not isinstance(logged, int) or logged <= step:
            keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def dev_is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def raise_recompile_limit(limit: int = 64) -> None:
    """Static shapes per backend / padded bucket are few but more than dynamo's default 8."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), limit))
    if hasattr(dc, "accumulated_recompile_limit"):
        dc.accumulated_recompile_limit = max(dc.accumulated_recompile_limit, 4 * limit)
    elif hasattr(dc, "accumulated_cache_size_limit"):
        dc.accumulated_cache_size_limit = max(dc.accumulated_cache_size_limit, 4 * limit)


def _postfix(s: dict) -> str:
    mfu = f" mfu {100 * s['mfu']:.1f}%" if s.get("mfu") else ""
    return (f"loss {s['loss']:.3f} | {s['tok_s'] / 1e3:.1f}K tok/s{mfu} | fill {100 * s['fill']:.0f}% | "
            f"{s['docs_per_row']:.1f} docs/row")
