"""transformers.Trainer (and TRL's SFTTrainer when installed) train with DataCollatorForPacking:
the loss goes down, and one optimiser step under gradient accumulation equals the step computed
from the documents one by one (so num_items_in_batch counted the right tokens)."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments  # noqa: E402

from seqpack.integrations.hf_collator import DataCollatorForPacking  # noqa: E402

from hf_util import tiny  # noqa: E402

VOCAB = 128


def counting_examples(lengths, seed=0):
    """Documents that count upward from a random start: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    return [{"input_ids": ((rng.integers(3, VOCAB) + np.arange(n)) % (VOCAB - 3) + 3).tolist()} for n in lengths]


def common_args(tmp_path, **kw):
    return dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0, **kw)


def trainer_for(kind, model, data, tmp_path, **kw):
    collator = DataCollatorForPacking(max_length=32)
    if kind == "Trainer":
        return Trainer(model=model, args=TrainingArguments(**common_args(tmp_path, **kw)), train_dataset=data,
                       data_collator=collator)
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    args = trl.SFTConfig(**common_args(tmp_path, **kw), packing=False, padding_free=False, max_length=None,
                         bf16=False, gradient_checkpointing=False)
    return trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(data),
                          processing_class=_tokenizer(), data_collator=collator)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t2", bos_token="t1")


@pytest.mark.parametrize("kind", ["Trainer", "SFTTrainer"])
def test_loss_goes_down(kind, tmp_path):
    rng = np.random.default_rng(1)
    data = counting_examples(rng.integers(4, 24, 64))
    trainer = trainer_for(kind, tiny("llama", "sdpa"), data, tmp_path, per_device_train_batch_size=8,
                          max_steps=24, learning_rate=3e-3, lr_scheduler_type="constant", warmup_steps=0)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:2]), losses


@pytest.mark.parametrize("kind, fused_loss", [("Trainer", False), ("SFTTrainer", False), ("Trainer", True)])
def test_accumulated_step_equals_documents_one_by_one(kind, fused_loss, tmp_path):
    """SGD, lr 1, two micro-batches of three examples: the update is exactly minus the gradient of
    (sum of every document's token losses) / (all predicted tokens); also with seqpack's fused loss
    (which must divide by Trainer's num_items_in_batch as transformers' loss does)."""
    data = counting_examples([5, 11, 3, 8, 6, 9], seed=2)
    model = tiny("llama", "sdpa")
    before = copy.deepcopy(model)
    if fused_loss:
        from seqpack.integrations.hf import enable_fused_loss
        enable_fused_loss(model, chunk_size=8)
    trainer = trainer_for(kind, model, data, tmp_path, per_device_train_batch_size=3, gradient_accumulation_steps=2,
                          max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                          warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0)
    trainer.train()

    total = sum(len(d["input_ids"]) - 1 for d in data)
    for d in data:
        ids = torch.tensor([d["input_ids"]])
        (before(input_ids=ids, labels=ids, use_cache=False).loss * (ids.shape[1] - 1) / total).backward()
    trained = dict(model.named_parameters())
    num = den = 0.0
    for name, p in before.named_parameters():
        step = (p.detach() - trained[name].detach().cpu())  # = lr * grad
        num += float((step - p.grad).pow(2).sum())
        den += float(p.grad.pow(2).sum())
    assert (num / den) ** 0.5 <= 1e-4
