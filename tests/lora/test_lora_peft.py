"""PEFT adapters both ways: ours -> `peft.PeftModel.from_pretrained`, PEFT's
`save_pretrained` -> `load_peft_adapter`, same logits; and every refusal."""

import json
import shutil

import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
from flax import nnx
from lora_helpers import MLP, randomize_adapters, torch_model
from model_cases import VOCAB, forward, relative_error, torch_logits

from adaprelora_jax.lora import LoRAConfig, apply_lora, load_peft_adapter, lora_modules
from adaprelora_jax.lora import lora_scale_of, merge_lora, read_peft_config, save_peft_adapter
from adaprelora_jax.models import from_pretrained

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
ADAPTER_FILE = "adapter_model.safetensors"
IDS = np.random.RandomState(0).randint(3, VOCAB - 1, (2, 16))


def _check_logits(ours, ref, base, what):
  error = relative_error(ours, ref)
  print(f"\n{what}: max relative logits error {error:.1e}")
  assert relative_error(base, ref) > 1e-2, "the adapter must change the logits"
  assert error < 1e-4


def _peft_layer(peft_model, name):
  """PEFT's LoRA layer for the module called `name` (e.g. model.layers.0.mlp.up_proj)."""
  return peft_model.base_model.model.get_submodule(name)


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_ours_to_peft(hf_checkpoint, tmp_path, name, use_rslora):
  folder = hf_checkpoint(name)
  model = from_pretrained(folder)
  apply_lora(model, LoRAConfig(4, 6, TARGETS[name], use_rslora=use_rslora), rngs=nnx.Rngs(0))
  randomize_adapters(model, seed=1, b_std=0.1)
  save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))

  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
  assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 6, use_rslora)
  assert config["target_modules"] == TARGETS[name] and config["bias"] == "none"
  assert config["fan_in_fan_out"] == (name == "gpt2")  # GPT-2's Conv1D
  tensors = safetensors.numpy.load_file(tmp_path / "adapter" / ADAPTER_FILE)
  layers = model.config.num_layers
  assert len(tensors) == 2 * layers * len(lora_modules(model))
  q = model.model.layers.self_attn.q_proj if name == "llama" else model.transformer.h.attn.c_attn
  q_name = "model.layers.1.self_attn.q_proj" if name == "llama" else "transformer.h.1.attn.c_attn"
  np.testing.assert_array_equal(tensors[f"base_model.model.{q_name}.lora_A.weight"],
                                np.asarray(q.lora_a[...])[1].T)
  np.testing.assert_array_equal(tensors[f"base_model.model.{q_name}.lora_B.weight"],
                                np.asarray(q.lora_b[...])[1].T)

  base = torch_model(folder)
  base_logits = torch_logits(base, IDS)
  peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
  assert _peft_layer(peft_model, q_name).scaling["default"] == lora_scale_of(model)
  _check_logits(forward(model, IDS), torch_logits(peft_model, IDS), base_logits,
                f"ours -> PEFT, {name}, rslora={use_rslora}")


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_peft_to_ours(hf_checkpoint, tmp_path, name, use_rslora):
  folder = hf_checkpoint(name)
  base = torch_model(folder)
  base_logits = torch_logits(base, IDS)
  # init_lora_weights=False leaves lora_B random (nn.Linear's init): a non-zero adapter.
  config = peft.LoraConfig(r=4, lora_alpha=3, target_modules=TARGETS[name], lora_dropout=0.1,
                           use_rslora=use_rslora, init_lora_weights=False, task_type="CAUSAL_LM")
  peft_model = peft.get_peft_model(base, config).eval()
  ref = torch_logits(peft_model, IDS)
  peft_model.save_pretrained(tmp_path / "adapter")

  model = load_peft_adapter(from_pretrained(folder), tmp_path / "adapter")
  assert {str(p[-1]) for p, _ in lora_modules(model)} == set(TARGETS[name])
  layer_name = "model.layers.0.mlp.down_proj" if name == "llama" else "transformer.h.0.mlp.c_fc"
  assert lora_scale_of(model) == _peft_layer(peft_model, layer_name).scaling["default"]
  assert all(m.lora_dropout.deterministic for _, m in lora_modules(model))  # inference mode
  _check_logits(forward(model, IDS), ref, base_logits,
                f"PEFT -> ours, {name}, rslora={use_rslora}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, hf_checkpoint):
  """`saved(name)`: (checkpoint folder, adapter folder) of a q/v adapter of our model."""
  root = tmp_path_factory.mktemp("adapters")
  made = {}

  def get(name):
    if name not in made:
      model = from_pretrained(hf_checkpoint(name))
      targets = ["q_proj", "v_proj"] if name == "llama" else ["c_attn"]
      apply_lora(model, LoRAConfig(4, 8, targets), rngs=nnx.Rngs(0))
      randomize_adapters(model, seed=2)
      save_peft_adapter(model, root / name)
      made[name] = (hf_checkpoint(name), root / name, model)
    return made[name]

  return get


def _copy(saved_folder, tmp_path):
  dest = tmp_path / "adapter"
  shutil.copytree(saved_folder, dest)
  return dest


def _edit_config(folder, **changes):
  file = folder / "adapter_config.json"
  file.write_text(json.dumps(json.loads(file.read_text()) | changes))


def _edit_tensors(folder, edit, metadata=None):
  file = folder / ADAPTER_FILE
  tensors = safetensors.numpy.load_file(file)
  edit(tensors)
  safetensors.numpy.save_file(tensors, file, metadata=metadata)


def test_load_into_a_model_that_has_adapters(saved, tmp_path):
  checkpoint, adapter, source = saved("llama")
  model = from_pretrained(checkpoint)
  apply_lora(model, LoRAConfig(4, 8, ["q_proj", "v_proj"]), rngs=nnx.Rngs(5))
  load_peft_adapter(model, adapter)
  for (_, ours), (_, theirs) in zip(lora_modules(model), lora_modules(source), strict=True):
    np.testing.assert_array_equal(np.asarray(ours.lora_a[...]), np.asarray(theirs.lora_a[...]))
    np.testing.assert_array_equal(np.asarray(ours.lora_b[...]), np.asarray(theirs.lora_b[...]))
  other_scale = from_pretrained(checkpoint)
  apply_lora(other_scale, LoRAConfig(4, 4, ["q_proj", "v_proj"]), rngs=nnx.Rngs(5))
  with pytest.raises(ValueError, match=r"r=4, scale 2.0 .*has r=4, scale 1.0"):
    load_peft_adapter(other_scale, adapter)
  other_modules = from_pretrained(checkpoint)
  apply_lora(other_modules, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(5))
  with pytest.raises(ValueError, match=r"v_proj.lora_A.weight.* which is not among the model's "
                     "LoRA layers"):
    load_peft_adapter(other_modules, adapter)
  merge_lora(model)
  with pytest.raises(ValueError, match="unmerge_lora first"):
    load_peft_adapter(model, adapter)


def test_refuses_another_architecture(saved, tmp_path):
  llama_checkpoint, _, _ = saved("llama")
  _, gpt2_adapter, _ = saved("gpt2")
  with pytest.raises(ValueError, match="adapter for a gpt2 model, this model is a llama"):
    load_peft_adapter(from_pretrained(llama_checkpoint), gpt2_adapter)
  # A PyTorch adapter carries no model_type: the tensor names give it away.
  folder = _copy(gpt2_adapter, tmp_path)
  _edit_tensors(folder, lambda t: None, metadata={"format": "pt"})
  _edit_config(folder, target_modules=["c_attn"])
  model = from_pretrained(llama_checkpoint)
  with pytest.raises(ValueError, match=r"adapts 'transformer.h.0.attn.c_attn', which is not a "
                     r"linear module of this Llama .*another base architecture"):
    load_peft_adapter(model, folder)
  assert not lora_modules(model)  # refused before anything changed


def test_refuses_wrong_shapes_missing_and_extra_tensors(saved, tmp_path):
  checkpoint, adapter, _ = saved("llama")
  key = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"
  cases = [
      (lambda t: t.update({key: np.zeros((4, 48), np.float32)}),
       r"v_proj.lora_A.weight' has shape \(4, 48\), expected \(4, 64\).*another base model size"),
      (lambda t: t.update({key: np.zeros((2, 64), np.float32)}),
       r"has shape \(2, 64\), expected \(4, 64\).*adapter_config.json has r=4"),
      (lambda t: t.pop(key), r"layers.1.self_attn.v_proj.lora_A.weight' is missing"),
      (lambda t: t.update({key.replace("v_proj", "k_proj"): np.zeros((4, 64), np.float32)}),
       r"k_proj.lora_A.weight' adapts model.layers.1.self_attn.k_proj, which is not among the "
       r"layers target_modules \('q_proj', 'v_proj'\) selects"),
      (lambda t: t.update({key.replace("lora_A.weight", "lora_magnitude_vector"):
                           np.zeros((32,), np.float32)}),
       "is not a LoRA factor of a module.*DoRA"),
  ]
  for edit, match in cases:
    folder = _copy(adapter, tmp_path / str(len(match)))
    _edit_tensors(folder, edit)
    model = from_pretrained(checkpoint)
    with pytest.raises(ValueError, match=match):
      load_peft_adapter(model, folder)
    assert not lora_modules(model)


@pytest.mark.parametrize("changes, match", [
    (dict(peft_type="IA3"), "peft_type 'IA3' is not LORA"),
    (dict(use_dora=True), r"use_dora=True \(DoRA\) is not supported"),
    (dict(bias="all"), "bias='all'"),
    (dict(rank_pattern={"q_proj": 8}), "per-module ranks"),
    (dict(layers_to_transform=[0]), "some layers only"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(target_modules=["nothing"]), "matches no linear module"),
])
def test_refuses_unsupported_configs(saved, tmp_path, changes, match):
  checkpoint, adapter, _ = saved("llama")
  folder = _copy(adapter, tmp_path)
  _edit_config(folder, **changes)
  with pytest.raises(ValueError, match=match):
    load_peft_adapter(from_pretrained(checkpoint), folder)


def test_file_errors_and_models_without_hf_names(saved, tmp_path):
  checkpoint, adapter, source = saved("llama")
  folder = _copy(adapter, tmp_path)
  (folder / ADAPTER_FILE).rename(folder / "adapter_model.bin")
  with pytest.raises(ValueError, match="adapter_model.bin .* safe_serialization"):
    load_peft_adapter(from_pretrained(checkpoint), folder)
  with pytest.raises(FileNotFoundError, match="adapter_config.json"):
    read_peft_config(tmp_path / "nowhere")
  assert read_peft_config(adapter) == LoRAConfig(4, 8, ["q_proj", "v_proj"])
  mlp = apply_lora(MLP(nnx.Rngs(0)), LoRAConfig(2, 2, ["up"]), rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="no Hugging Face names"):
    save_peft_adapter(mlp, tmp_path / "mlp")
  with pytest.raises(TypeError, match="no Hugging Face names"):
    load_peft_adapter(mlp, adapter)
  with pytest.raises(ValueError, match="no LoRA adapter to save"):
    save_peft_adapter(from_pretrained(checkpoint), tmp_path / "none")
  mixed = from_pretrained(checkpoint)
  apply_lora(mixed, LoRAConfig(4, 8, ["q_proj"]), rngs=nnx.Rngs(0))
  apply_lora(mixed, LoRAConfig(2, 8, ["v_proj"]), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="several LoRAConfigs"):
    save_peft_adapter(mixed, tmp_path / "mixed")
  # A merged model exports the same adapter.
  merge_lora(source)
  save_peft_adapter(source, tmp_path / "merged")
  before, after = (safetensors.numpy.load_file(f / ADAPTER_FILE)
                   for f in (adapter, tmp_path / "merged"))
  assert before.keys() == after.keys()
  for key in before:
    np.testing.assert_array_equal(before[key], after[key])
  jax.clear_caches()
