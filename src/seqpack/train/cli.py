"""``seqpack train``: train the GPT on packed data (every `TrainConfig` field is a flag).

    seqpack train --preset tiny --steps 200                       # bundled corpus, CPU or GPU
    seqpack train --preset 304M --capacity 4096 --rows-per-step 8 --mode packed
    torchrun --nproc_per_node 2 -m seqpack.cli train --preset 304M --dist ddp
"""

from __future__ import annotations

import argparse
import json

from seqpack.train.config import TrainConfig, add_config_arguments, config_from_args


def _vocab(text: str) -> int:
    n = int(text)
    if n != 0 and n < 2:
        raise argparse.ArgumentTypeError(f"must be 0 (keep the data's ids) or >= 2, got {n}")
    return n


def add_arguments(parser) -> None:
    add_config_arguments(parser, TrainConfig())
    parser.add_argument("--vocab", type=_vocab, default=0,
                        help="renumber tokens to the N most frequent ids (+1 unknown) for small CPU runs; "
                             "0 keeps the data's vocabulary")

    # ~60 flags make argparse's usage block a screenful: a bad value gets one line instead,
    # naming the flag ("seqpack train: error: argument --steps: must be >= 1, got 0")
    def one_line_error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (seqpack train --help lists the options)\n")

    parser.error = one_line_error


def run(args) -> int:
    from seqpack.data.load import load_documents
    from seqpack.train.trainer import Trainer

    cfg = config_from_args(args)
    docs = vocab = plan = None
    if args.vocab:
        from seqpack.train.data import compact_vocab

        docs, _, plan = load_documents(cfg.data, cfg.max_docs)
        docs, _ = compact_vocab(docs, args.vocab)
        vocab = args.vocab
    trainer = Trainer(cfg, docs=docs, vocab_size=vocab, plan=plan, data_options={"vocab": args.vocab})
    cfg = trainer.cfg  # a stored packing fixes the capacity
    if trainer.dist.is_main:
        mc = trainer.model_config
        print(f"model: {trainer.num_params / 1e6:.2f}M parameters ({mc.n_layer} layers, d={mc.n_embd}, "
              f"{mc.n_head} heads of {mc.head_dim}, {mc.n_kv_head} kv heads, vocab {mc.vocab_size}); "
              f"device {trainer.device}, {'bf16 autocast' if trainer.use_bf16 else 'fp32'}, "
              f"compile {trainer._compile_kind()}, dist {trainer.dist.kind} x{trainer.dist.world}"
              + (f" (dp {trainer.dist.world // cfg.cp} x cp {cfg.cp})" if cfg.cp > 1 else ""))
        ld = trainer.loader
        if cfg.loader == "online":
            print(f"data: {len(trainer.docs):,} documents, packed online into steps of {cfg.rows_per_step} rows "
                  f"of {cfg.capacity}; mode {cfg.mode}")
        else:
            print(f"data: {len(trainer.docs):,} documents -> {ld.plan.num_bins:,} rows of {cfg.capacity} "
                  f"(fill {100 * ld.plan.efficiency:.2f}%), {ld.steps_per_epoch} steps per epoch of "
                  f"{cfg.rows_per_step} rows; mode {cfg.mode}")
    summary = trainer.run()
    if trainer.dist.is_main:
        keep = {k: v for k, v in summary.items() if k not in ("history", "wall_history")}
        print(json.dumps(keep))
    return 0
