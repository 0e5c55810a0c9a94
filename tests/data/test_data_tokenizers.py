"""Tokenizers: the byte-level fallback, and local Hugging Face folders the tests build and
save, read here and compared with `transformers`' own loading of the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from adaprelora_jax.data import ByteTokenizer, DataError, HFTokenizer, TokenIds
from adaprelora_jax.data import load_tokenizer

LINES = ["The Eagle is a pub near Burger King.", "Zizzi serves fast food for £20-25.",
         "Question: how many eggs?\nAnswer: 3 * 400 = 1,200\n#### 1200",
         "naïve café — déjà vu"] * 4
TEXTS = ["The Eagle serves fast food.", "  two  spaces\nand a newline", "café £25 ✓", ""]


def save_bpe(folder: Path, specials: list[str], config: dict, *, bos: str | None = None) -> Path:
  """A byte-level BPE (GPT-2 style) trained on LINES, saved with its tokenizer_config.json;
  with `bos`, its post-processor puts that token first (Llama style)."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(LINES, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tok.token_to_id(bos))])
  folder.mkdir(parents=True)
  tok.save(str(folder / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
  (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  return folder


def test_task_rows_start_with_the_start_token(tmp_path):
  """A Llama-style tokenizer's start token begins every training row, classification row,
  generation prompt and choice row, once, and is never trained on as a target."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from adaprelora_jax.data import (ChoiceExample, ClassificationExample, TaskData,
                                   TextExample)
  from adaprelora_jax.train import tasks  # pylint: disable=import-outside-toplevel
  from adaprelora_jax.train.evaluate import choice_rows  # pylint: disable=import-outside-toplevel

  folder = save_bpe(tmp_path / "tok", ["<unk>", "<s>", "</s>", "<pad>"],
                    {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, bos="<s>")
  tok = load_tokenizer(folder)
  bos = tok.bos_id
  assert bos is not None
  text = TaskData("gsm8k", "train", "mem", (TextExample("Question: q\nAnswer:", " 42"),),
                  rows_read=1)
  rows = tasks.encode_text(text, tok, seq_len=32)
  assert rows.tokens[0, 0] == bos and list(rows.tokens[0]).count(bos) == 1
  trained = rows.tokens[0, 1:][rows.loss_mask[0] == 1].tolist()
  assert trained == tok.encode(" 42") + [tok.eos_id] and bos not in trained
  cls = TaskData("glue/sst2", "train", "mem", (ClassificationExample("good food", 1),),
                 rows_read=1, label_names=("negative", "positive"))
  data = tasks.encode_classification(cls, tok, seq_len=16)
  assert data.tokens[0, 0] == bos and int(data.attention_mask[0].sum()) == 1 + len(
      tok.encode("good food"))
  choice = choice_rows(tok, [ChoiceExample("Q: sky?\nAnswer:", (" blue", " red"), 0)], 32)
  assert np.all(choice.tokens[:, 0] == bos)
  assert not np.any(choice.score_mask[:, 0])  # position 0 predicts the prompt's first token


def test_byte_tokenizer():
  tok = load_tokenizer(None)
  assert isinstance(tok, ByteTokenizer)
  assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id) == (256, 255, 255, None)
  for text in TEXTS:
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text) + [tok.eos_id]) == text
  assert tok.example("p", "t") == TokenIds([112], [116, 255])
  assert tok.encode_prompt("hé") == tok.encode("hé")  # no start token


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_a_local_folder_matches_transformers(tmp_path, style):
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  if style == "gpt2":
    folder = save_bpe(tmp_path / "tok", ["<|endoftext|>"],
                      {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})
  else:
    # An end token written as an object, as older tokenizer_config.json files do.
    eos = {"__type": "AddedToken", "content": "</s>", "lstrip": False, "rstrip": False,
           "normalized": False, "single_word": False}
    folder = save_bpe(tmp_path / "tok", ["<unk>", "<s>", "</s>", "<pad>"],
                      {"bos_token": "<s>", "eos_token": eos, "pad_token": "<pad>"}, bos="<s>")
  ours = load_tokenizer(folder)
  theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  assert isinstance(ours, HFTokenizer)
  assert ours.vocab_size == len(theirs)
  assert ours.eos_id == theirs.eos_token_id
  assert ours.pad_id == (theirs.eos_token_id if theirs.pad_token_id is None
                         else theirs.pad_token_id)
  bos = [] if ours.bos_id is None else [ours.bos_id]
  assert bos == ([] if style == "gpt2" else [theirs.bos_token_id])
  for text in TEXTS + LINES[:4]:
    ids = ours.encode(text)
    assert ids == theirs(text, add_special_tokens=False)["input_ids"]
    assert bos + ids == theirs(text)["input_ids"]  # what the model sees first
    assert ours.encode_prompt(text) == theirs(text)["input_ids"]
    assert ours.decode(ids + [ours.eos_id]) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids) == text  # byte-level BPE is lossless
  example = ours.example("Question: q\nAnswer:", " 42")
  assert example.target[-1] == ours.eos_id
  assert example.prompt + example.target[:-1] == bos + ours.encode("Question: q\nAnswer: 42")
  assert example.prompt == theirs("Question: q\nAnswer:")["input_ids"]
  # The tokenizer.json file itself is a source too.
  assert load_tokenizer(folder / "tokenizer.json").encode(TEXTS[0]) == ours.encode(TEXTS[0])


def test_end_token_fallback_and_errors(tmp_path):
  # No end token configured: the usual names are looked up in the vocabulary.
  folder = save_bpe(tmp_path / "plain", ["</s>"], {})
  tok = load_tokenizer(folder)
  assert tok.eos_id == tok.pad_id == Tokenizer.from_file(
      str(folder / "tokenizer.json")).token_to_id("</s>")
  with pytest.raises(DataError, match="no end token"):
    load_tokenizer(save_bpe(tmp_path / "noeos", ["<x>"], {}))
  with pytest.raises(DataError, match="no tokenizer.json"):
    load_tokenizer(tmp_path / "missing")
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "tokenizer.json").write_text("{}")
  with pytest.raises(DataError, match="not a readable tokenizer.json"):
    load_tokenizer(tmp_path / "broken")
