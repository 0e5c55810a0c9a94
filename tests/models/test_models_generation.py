"""`generate` against `transformers`' `generate(do_sample=False)`, token for token."""

import numpy as np
import pytest
import torch
from model_cases import VOCAB, left_pad
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from adaprelora_jax.models import generate
from adaprelora_jax.models.generation import ban_repeated_ngrams

PAD = 0
MAX_NEW = 10


def _prompts(seed=0):
  rng = np.random.RandomState(seed)
  return left_pad([rng.randint(3, VOCAB - 1, n) for n in (7, 4, 6)], PAD)


def _hf_generate(torch_model, ids, mask, **kwargs):
  with torch.no_grad():
    out = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                               do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD,
                               **kwargs)
  return out.numpy()


def _eos_mid_generation(torch_model, ids, mask, step, **kwargs):
  """A token the first row generates at `step` without an eos, used as the eos so that
  row finishes early while others go on."""
  out = _hf_generate(torch_model, ids, mask, eos_token_id=None, **kwargs)
  return int(out[0, ids.shape[1] + step])


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2"])
def test_greedy_matches_transformers(loaded, name):
  torch_model, model = loaded(name)
  ids, mask = _prompts()
  eos = _eos_mid_generation(torch_model, ids, mask, step=3)
  ref = _hf_generate(torch_model, ids, mask, eos_token_id=eos)
  out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                 pad_token_id=PAD)
  np.testing.assert_array_equal(np.asarray(out), ref)
  assert (ref[0, ids.shape[1] + 4:] == PAD).all()  # the first row did stop early


def test_greedy_without_eos_and_with_ngram_ban(loaded):
  torch_model, model = loaded("llama")
  ids, mask = _prompts(1)
  ref = _hf_generate(torch_model, ids, mask, eos_token_id=None, no_repeat_ngram_size=1)
  out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, eos_token_id=(),
                 pad_token_id=PAD, no_repeat_ngram_size=1)
  np.testing.assert_array_equal(np.asarray(out), ref)
  assert ref.shape[1] == ids.shape[1] + MAX_NEW


BEAM_CASES = {
    "gpt2": dict(num_beams=3, length_penalty=1.5, no_repeat_ngram_size=2),
    "llama": dict(num_beams=4, length_penalty=0.7, no_repeat_ngram_size=3,
                  num_return_sequences=2),
    "mistral": dict(num_beams=3, early_stopping=True),
    "qwen2": dict(num_beams=3, length_penalty=2.0, early_stopping="never",
                  num_return_sequences=3),
}


@pytest.mark.parametrize("name", sorted(BEAM_CASES))
def test_beam_search_matches_transformers(loaded, name):
  torch_model, model = loaded(name)
  kwargs = BEAM_CASES[name]
  ids, mask = _prompts(2)
  eos = _eos_mid_generation(torch_model, ids, mask, step=2, **kwargs)
  ref = _hf_generate(torch_model, ids, mask, eos_token_id=eos, **kwargs)
  out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                 pad_token_id=PAD, **kwargs)
  np.testing.assert_array_equal(np.asarray(out), ref)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_ban_matches_transformers_processor(n):
  rng = np.random.RandomState(n)
  tokens = rng.randint(0, 5, (6, 12))  # a small alphabet: many repeats
  scores = rng.randn(6, 5).astype(np.float32)
  for length in range(1, 13):
    ref = NoRepeatNGramLogitsProcessor(n)(torch.tensor(tokens[:, :length]),
                                           torch.tensor(scores)).numpy()
    out = ban_repeated_ngrams(np.asarray(tokens), length, scores, n)
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_generate_checks_arguments(loaded):
  _, model = loaded("llama")
  ids, mask = _prompts()
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(model, ids, max_new_tokens=0)
  with pytest.raises(ValueError, match="num_return_sequences"):
    generate(model, ids, max_new_tokens=2, num_beams=2, num_return_sequences=3)
  with pytest.raises(ValueError, match="early_stopping"):
    generate(model, ids, max_new_tokens=2, num_beams=2, early_stopping="sometimes")


def _frequent_tokens(torch_model, ids, mask, k=3):
  """The `k` tokens beam search generates most often without an eos: as eos tokens they
  end many hypotheses early."""
  out = _hf_generate(torch_model, ids, mask, eos_token_id=None, num_beams=2)
  values, counts = np.unique(out[:, ids.shape[1]:], return_counts=True)
  return [int(v) for v in values[np.lexsort((values, -counts))][:k]]


# Prompt seeds and settings under which transformers' stopping heuristics (no possible
# improvement; all beams finished with early_stopping=True) change the output: a
# version of `generate` without either heuristic fails these.
HEURISTIC_CASES = {  # name: (prompt seed, number of eos tokens, generate kwargs)
    "many-eos": (1, 8, dict(num_beams=2)),
    "early-stopping": (1, 3, dict(num_beams=3, early_stopping=True)),
}


@pytest.mark.parametrize("case", sorted(HEURISTIC_CASES))
def test_beam_search_stopping_heuristics_match_transformers(loaded, case):
  torch_model, model = loaded("llama")
  seed, num_eos, kwargs = HEURISTIC_CASES[case]
  rng = np.random.RandomState(seed)
  ids, mask = left_pad([rng.randint(3, VOCAB - 1, n) for n in (7, 4, 6, 5)], PAD)
  eos = _frequent_tokens(torch_model, ids, mask, num_eos)
  ref = _hf_generate(torch_model, ids, mask, eos_token_id=eos, **kwargs)
  out = generate(model, ids, attention_mask=mask, max_new_tokens=MAX_NEW,
                 eos_token_id=tuple(eos), pad_token_id=PAD, **kwargs)
  np.testing.assert_array_equal(np.asarray(out), ref)


def test_gpt2_generation_stays_within_its_positions(loaded):
  _, model = loaded("gpt2")  # 64 positions
  with pytest.raises(ValueError, match="exceeds GPT-2's 64 positions"):
    generate(model, np.ones((1, 60), np.int32), max_new_tokens=5)
