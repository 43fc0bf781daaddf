"""``seqpack pack INPUT... -o OUTPUT --capacity N``: pack a dataset globally into Parquet rows.

See `seqpack.data.pack` for the pipeline and the output schema.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from seqpack.data.pack import COMPRESSIONS  # only when `pack` is the command

    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="Parquet or JSONL file(s), a directory of them, a glob, or 'chitchat' / "
                        "'chitchat:chat' (the bundled corpus as text / as chat messages)")
    p.add_argument("-o", "--output", required=True,
                   help="a .parquet file, or a directory (any other name) of Parquet shards written "
                        "two at a time, faster on big inputs. An existing OUTPUT is replaced (once the "
                        "new one is complete) only if it is a complete earlier seqpack output; "
                        "anything else there is refused")
    p.add_argument("--force", action="store_true",
                   help="also replace an incomplete earlier seqpack output directory (never "
                        "anything seqpack did not write)")
    p.add_argument("--capacity", type=int, required=True, help="tokens per packed row")
    p.add_argument("--strategy", default="bfd", choices=["bfd", "ffd", "nextfit", "wrapped"])
    p.add_argument("--overflow", default="error", choices=["error", "split", "truncate", "drop"],
                   help="documents longer than capacity: refuse (default), split (chats between "
                        "turns where possible), truncate or drop")
    p.add_argument("--max-docs-per-row", type=int, default=None, help="cap on documents per row")
    p.add_argument("--seed", type=int, default=0, help="seed of the row order shuffle (bfd/ffd)")
    p.add_argument("--label-shift", default="model", choices=["model", "collator"],
                   help="labels aligned with input_ids (HF models shift them) or next-token targets")
    p.add_argument("--column", default=None,
                   help="column holding the documents (default: input_ids, else messages, else text)")
    p.add_argument("--tokenizer", default=None,
                   help="local tokenizer.json or save_pretrained() directory for text/chat input "
                        "(default: the bundled GPT-2 BPE)")
    p.add_argument("--no-mask-prompt", dest="mask_prompt", action="store_false",
                   help="chats: train on every token, not only assistant turns")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the PNG report")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--compression", default="zstd", choices=COMPRESSIONS, help="Parquet compression")


def run(args) -> int:
    from seqpack.data.pack import pack_to_parquet

    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    # bad input raises InputError (or OSError): `seqpack.cli.main` prints it as one line, exit 2
    pack_to_parquet(inputs, args.output, capacity=args.capacity, strategy=args.strategy,
                    overflow=args.overflow, max_docs_per_bin=args.max_docs_per_row, seed=args.seed,
                    label_shift=args.label_shift, column=args.column, tokenizer=args.tokenizer,
                    mask_prompt=args.mask_prompt, report=args.report, progress=args.progress,
                    compression=args.compression, force=args.force)
    return 0
