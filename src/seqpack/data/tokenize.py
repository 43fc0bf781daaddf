"""Tokenizers from a local path, and chat conversations rendered to tokens.

Notable:
- No model hub: `load_tokenizer(path)` reads a ``tokenizer.json`` file, or a directory saved
  with ``save_pretrained()`` (through transformers when it is installed, else its
  ``tokenizer.json`` through HF ``tokenizers``). ``None`` gives the bundled GPT-2 BPE.
- A chat conversation (``[{"role": ..., "content": ...}, ...]``) becomes one document:
  every message is ``"{role}: "`` then ``"{content}\\n"``, tokenized on its own (so turn
  boundaries are exact token offsets), and the document ends with the end-of-text token.
  With ``mask_prompt`` only assistant contents (and the final end-of-text after an
  assistant turn) carry labels; role headers and other turns get -100.
- Turn starts are kept so that an over-long conversation can be split between turns
  rather than inside one (`split_points`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX


__all__ = ["TextEncoder", "load_tokenizer", "encode_chat", "split_points"]

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


@dataclass
class TextEncoder:
    """A tokenizer reduced to what packing needs: batched text -> token ids.

    ``eos_id`` is appended to every document when not None. ``name`` identifies the
    tokenizer in fingerprints (resume states, output metadata).
    """

    tokenizer: object
    eos_id: int | None
    name: str
    kind: str  # "tokenizers" or "transformers"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        if self.kind == "tokenizers":
            encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            return [np.asarray(e.ids, dtype=np.int32) for e in encs]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int32) for x in ids]


def _eos_from_vocab(token_to_id) -> int | None:
    for tok in _EOS_CANDIDATES:
        i = token_to_id(tok)
        if i is not None:
            return int(i)
    return None


def load_tokenizer(path: str | Path | None = None) -> TextEncoder:
    """The bundled GPT-2 BPE (``path=None``) or a tokenizer from a local path.

    ``path`` is a ``tokenizer.json`` file or a directory holding one (or any directory
    transformers' ``AutoTokenizer.from_pretrained(path, local_files_only=True)`` reads).
    Raises FileNotFoundError naming the path when it does not exist.
    """
    if path is None:
        from seqpack.data.corpus import EOS_ID, gpt2_tokenizer

        return TextEncoder(gpt2_tokenizer(), EOS_ID, "gpt2-bpe (bundled)", "tokenizers")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path {str(p)!r} does not exist: pass a tokenizer.json "
                                f"file or a directory saved with save_pretrained(), or leave the "
                                f"tokenizer out to use the bundled GPT-2 BPE")
    from tokenizers import Tokenizer

    if p.is_file():
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise InputError(f"tokenizer file {str(p)!r} could not be read as a HF tokenizers "
                             f"tokenizer.json: {e}") from None
        return TextEncoder(tok, _eos_from_vocab(tok.token_to_id), f"tokenizers:{p.name}", "tokenizers")
    try:
        import transformers  # noqa: F401
    except ImportError:
        transformers = None
    if transformers is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            if not (p / "tokenizer.json").exists():
                raise InputError(f"tokenizer directory {str(p)!r} could not be loaded by "
                                 f"transformers ({type(e).__name__}: {e})") from None
        else:
            eos = tok.eos_token_id
            if eos is None:  # no tokenizer_config.json: look the usual names up in the vocab
                eos = _eos_from_vocab(tok.get_vocab().get)
            return TextEncoder(tok, None if eos is None else int(eos), f"transformers:{p.name}",
                               "transformers")
    if not (p / "tokenizer.json").exists():
        raise FileNotFoundError(f"tokenizer directory {str(p)!r} has no tokenizer.json (and "
                                f"transformers is not installed to read other formats)")
    tok = Tokenizer.from_file(str(p / "tokenizer.json"))
    return TextEncoder(tok, _eos_from_vocab(tok.token_to_id), f"tokenizers:{p.name}", "tokenizers")


# ----------------------------------------------------------------------------------------
# chat


def _message_parts(msg, where: str, i: int) -> tuple[str, str]:
    if not isinstance(msg, dict):
        raise InputError(f"{where}: messages[{i}] is a {type(msg).__name__}, expected a dict "
                         f"with 'role' and 'content'")
    role, content = msg.get("role"), msg.get("content")
    if not isinstance(role, str):
        raise InputError(f"{where}: messages[{i}] has no string 'role' (keys: {sorted(msg)})")
    if isinstance(content, list):  # OpenAI-style content parts: keep the text ones
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise InputError(f"{where}: messages[{i}] ({role}) has no string 'content' (got "
                         f"{type(content).__name__})")
    return role, content


def encode_chat(encoder: TextEncoder, conversations, *, mask_prompt: bool = True,
                where=lambda j: f"row {j}"):
    """Conversations -> (tokens, labels, turn_starts), one entry per conversation.

    tokens: int32 arrays; labels: int32 arrays (-100 where no loss) or None when
    ``mask_prompt`` is False; turn_starts: int64 arrays, the token offset of each message.
    ``where(j)`` names conversation j in error messages (file and row).
    """
    headers: dict[str, np.ndarray] = {}
    bodies: list[str] = []
    shape: list[list[tuple[str, int]]] = []
    for j, conv in enumerate(conversations):
        if conv is None or not isinstance(conv, (list, tuple)):
            raise InputError(f"{where(j)}: messages is {type(conv).__name__}, expected a list of "
                             f"{{'role', 'content'}} dicts")
        turns = []
        for i, msg in enumerate(conv):
            role, content = _message_parts(msg, where(j), i)
            if role not in headers:
                headers[role] = encoder.encode_batch([f"{role}: "])[0]
            turns.append((role, len(bodies)))
            bodies.append(content + "\n")
        shape.append(turns)
    body_ids = encoder.encode_batch(bodies)
    eos = None if encoder.eos_id is None else np.array([encoder.eos_id], np.int32)
    out_tok, out_lab, out_turn = [], [], []
    for turns in shape:
        parts, labs, starts, pos = [], [], [], 0
        for role, k in turns:
            h, b = headers[role], body_ids[k]
            starts.append(pos)
            parts += [h, b]
            pos += h.size + b.size
            if mask_prompt:
                labs.append(np.full(h.size, IGNORE_INDEX, np.int32))
                labs.append(b if role == "assistant" else np.full(b.size, IGNORE_INDEX, np.int32))
        if eos is not None and turns:
            parts.append(eos)
            if mask_prompt:
                last_is_assistant = turns[-1][0] == "assistant"
                labs.append(eos if last_is_assistant else np.array([IGNORE_INDEX], np.int32))
        out_tok.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
        out_lab.append((np.concatenate(labs) if labs else np.zeros(0, np.int32)) if mask_prompt else None)
        out_turn.append(np.asarray(starts, np.int64))
    return out_tok, (out_lab if mask_prompt else None), out_turn


def split_points(length: int, turn_starts, limit: int) -> np.ndarray:
    """Where to cut a document of ``length`` tokens into pieces of at most ``limit`` tokens.

    Cuts fall on turn starts where possible: each piece ends at the last turn start that
    keeps it within ``limit`` (and is past the piece's own start); a single turn longer
    than ``limit`` is cut every ``limit`` tokens. Returns the piece starts, int64, first 0.
    """
    turns = np.asarray(turn_starts if turn_starts is not None else (), np.int64)
    starts = [0]
    s = 0
    while length - s > limit:
        # the last turn start in (s, s + limit]
        k = np.searchsorted(turns, s + limit, side="right") - 1
        cut = int(turns[k]) if k >= 0 and turns[k] > s else s + limit
        starts.append(cut)
        s = cut
    return np.asarray(starts, np.int64)
