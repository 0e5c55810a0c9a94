"""Tokenizers with one small interface: the byte-level fallback and a local Hugging Face
tokenizer folder.

Both expose `encode(text) -> list[int]` (no special tokens, so a prompt and its target
concatenate), `encode_prompt(text)` (the start of a sequence: `bos_id`, when there is one,
then `encode(text)`, as `transformers` encodes a text with its special tokens),
`decode(ids) -> str` (special tokens dropped), `vocab_size`, `eos_id` (ends every target),
`pad_id` (fills rows; the attention mask, not the id, hides it), `bos_id` (the token the
model expects first, or None) and `example(prompt, target)` (`encode_prompt(prompt)`,
`encode(target) + [eos_id]`).

>>> tok = load_tokenizer(None)
>>> tok.encode("hé"), tok.decode([104, 195, 169, 255])
([104, 195, 169], 'hé')
>>> tok.example("ab\\n", "cd")
TokenIds(prompt=[97, 98, 10], target=[99, 100, 255])
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from adaprelora_jax.data.records import DataError


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """Token ids of a prompt and of its target (the target ends with the end token)."""

  prompt: list[int]
  target: list[int]


class Tokenizer(Protocol):
  """What the loaders and the training side need from a tokenizer."""

  vocab_size: int
  eos_id: int
  pad_id: int
  bos_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def encode_prompt(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def example(self, prompt: str, target: str) -> TokenIds: ...


class ByteTokenizer:
  """UTF-8 bytes as token ids 0..255; 255 (never a UTF-8 byte) ends a target and pads."""

  vocab_size = 256
  eos_id = 255
  pad_id = 255
  bos_id = None

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_prompt(self, text: str) -> list[int]:
    return self.encode(text)  # no start token

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

  def example(self, prompt: str, target: str) -> TokenIds:
    return TokenIds(self.encode_prompt(prompt), self.encode(target) + [self.eos_id])


# Names of the end token in the common model families, tried when the folder's config
# names none (GPT-2, Llama 2 / Mistral, Llama 3, Gemma, Qwen2).
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def _token_name(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


class HFTokenizer:
  """A Hugging Face fast tokenizer (`tokenizer.json`) read with the `tokenizers` library.

  The special tokens come from `tokenizer_config.json` (else `special_tokens_map.json`):
  `eos_token` (else a usual end-token name found in the vocabulary), `pad_token` (else the
  end token), `bos_token` when the tokenizer puts it before the text (its post-processor or
  `add_bos_token`). Truncation and padding saved in the file are switched off.
  """

  def __init__(self, path: str | Path):
    try:
      from tokenizers import Tokenizer as _Tokenizer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise DataError(f"{path}: a tokenizer folder needs the `tokenizers` package "
                      "(pip install 'adaprelora-jax[data]')") from e

    path = Path(path).expanduser()
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
      raise DataError(
          f"{path}: no tokenizer.json (a Hugging Face tokenizer folder needs one; "
          "`AutoTokenizer.from_pretrained(name).save_pretrained(folder)` writes it for fast "
          "tokenizers), or pass no tokenizer for the byte-level one")
    try:
      self._tok = _Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises plain Exceptions
      raise DataError(f"{file}: not a readable tokenizer.json ({e})") from e
    self._tok.no_truncation()
    self._tok.no_padding()
    self.path = str(file.parent)
    config = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
      extra = file.parent / name
      if extra.is_file():
        for key, value in json.loads(extra.read_text(encoding="utf-8")).items():
          config.setdefault(key, value)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = self._special_id(config.get("eos_token"))
    if eos is None:
      eos = next((i for i in map(self._tok.token_to_id, _EOS_NAMES) if i is not None), None)
    if eos is None:
      raise DataError(f"{file.parent}: no end token (set `eos_token` in tokenizer_config.json)")
    self.eos_id: int = eos
    pad = self._special_id(config.get("pad_token"))
    self.pad_id: int = eos if pad is None else pad
    # The token put before the text: what the post-processor adds, or `add_bos_token`.
    plain = self._tok.encode("a", add_special_tokens=False).ids
    full = self._tok.encode("a", add_special_tokens=True).ids
    prefix = full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []
    bos = self._special_id(config.get("bos_token"))
    if len(prefix) == 1:
      bos = prefix[0]
    elif not config.get("add_bos_token", False):
      bos = None
    self.bos_id: int | None = bos

  def _special_id(self, value: Any) -> int | None:
    name = _token_name(value)
    return None if name is None else self._tok.token_to_id(name)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_prompt(self, text: str) -> list[int]:
    """`[bos_id] + encode(text)` when the tokenizer starts a text with a token (Llama,
    Mistral), else `encode(text)` (GPT-2, Qwen2)."""
    return ([] if self.bos_id is None else [self.bos_id]) + self.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def example(self, prompt: str, target: str) -> TokenIds:
    return TokenIds(self.encode_prompt(prompt), self.encode(target) + [self.eos_id])

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def load_tokenizer(path: str | Path | None) -> ByteTokenizer | HFTokenizer:
  """The tokenizer of a local Hugging Face folder (or its tokenizer.json); None -> bytes.

  Raises DataError for a folder without a readable tokenizer.json or without an end token.
  """
  return ByteTokenizer() if path is None else HFTokenizer(path)
