"""Run by torchrun from test_hf_stack.py: transformers.Trainer with DataCollatorForPacking on 2 gloo
processes. Saves, per rank, the batches it trained on in one epoch and whether the isolation probe ran;
and (rank 0) the weights after one SGD step for comparison with the documents one by one."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
VOCAB = 128
EPOCH_LENGTHS = [5, 11, 3, 8, 6, 9, 4, 12, 7, 5, 10, 3, 6, 8]  # 14 examples: 7 per rank, 3 batches of 3
STEP_LENGTHS = [5, 11, 3, 8, 6, 9]  # 3 per rank, one step


def examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": ((rng.integers(3, VOCAB) + np.arange(n)) % (VOCAB - 3) + 3).tolist()} for n in lengths]


def main(out: Path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_util import tiny
    from seqpack.integrations import hf
    from seqpack.integrations.hf_collator import DataCollatorForPacking

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    class Count(TrainerCallback):
        batches = 0

        def on_step_end(self, args, state, control, **kw):
            Count.batches += 1

    def args(name, **kw):
        return TrainingArguments(output_dir=str(out / name), use_cpu=True, report_to="none", save_strategy="no",
                                 disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
                                 ddp_backend="gloo", per_device_train_batch_size=3, **kw)

    model = tiny("llama", "sdpa")
    trainer = Trainer(model=model, args=args("epoch", num_train_epochs=1, learning_rate=1e-3, logging_steps=1),
                      train_dataset=examples(EPOCH_LENGTHS), data_collator=DataCollatorForPacking(max_length=32),
                      callbacks=[Count()])
    trainer.train()
    checked = bool(getattr(model, "_seqpack_checked", None))
    torch.save({"batches": Count.batches, "checked": checked}, out / f"epoch-rank{rank}.pt")

    model = tiny("llama", "sdpa")
    trainer = Trainer(model=model, args=args("step", max_steps=1, learning_rate=1.0, optim="sgd",
                                             lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                                             max_grad_norm=0.0),
                      train_dataset=examples(STEP_LENGTHS), data_collator=DataCollatorForPacking(max_length=32))
    trainer.train()
    if rank == 0:
        torch.save({n: p.detach().cpu() for n, p in model.named_parameters()}, out / "step.pt")
    assert hf.is_packing_enabled(model)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
