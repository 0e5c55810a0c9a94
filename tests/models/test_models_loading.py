"""`from_pretrained`: dtypes, sharded checkpoints, host memory, and bad checkpoints."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx
from model_cases import VOCAB, forward, make_hf, torch_logits

import adaprelora_jax
from adaprelora_jax.models import from_pretrained

IDS = np.random.RandomState(0).randint(3, VOCAB - 1, (2, 12))


def _params(model):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_bf16_checkpoint_stays_bf16(tmp_path):
  torch_model = make_hf("llama", tmp_path / "bf16", dtype=torch.bfloat16)
  kept = from_pretrained(tmp_path / "bf16", dtype=None)
  asked = from_pretrained(tmp_path / "bf16", dtype=jnp.bfloat16)
  upcast = from_pretrained(tmp_path / "bf16")  # the default dtype, float32
  for model, dtype in ((kept, jnp.bfloat16), (asked, jnp.bfloat16), (upcast, jnp.float32)):
    dtypes = {v.dtype for v in _params(model).values()}
    assert dtypes == {np.dtype(dtype)}
  # The values are the checkpoint's, exactly; compute is float32 either way.
  state = torch_model.state_dict()
  kernel = _params(kept)[("model", "layers", "self_attn", "q_proj", "kernel")]
  expected = state["model.layers.1.self_attn.q_proj.weight"].float().numpy().T
  np.testing.assert_array_equal(kernel[1].astype(np.float32), expected)
  ref = forward(upcast, IDS)
  np.testing.assert_allclose(forward(kept, IDS), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_float32_checkpoint_loaded_as_bf16(checkpoints):
  torch_model, folder = checkpoints("gpt2")
  model = from_pretrained(folder, dtype=jnp.bfloat16)
  assert {v.dtype for v in _params(model).values()} == {np.dtype(jnp.bfloat16)}
  ref = torch_logits(torch_model, IDS)
  assert np.abs(forward(model, IDS) - ref).max() < 0.1 * np.abs(ref).max()


def test_sharded_checkpoint_with_index_equals_single_file(checkpoints, loaded, tmp_path):
  _, single = loaded("qwen2")
  make_hf("qwen2", tmp_path / "shards", max_shard_size="50KB")
  assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 3
  assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
  sharded = from_pretrained(tmp_path / "shards")
  a, b = _params(single), _params(sharded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_gpt2_hub_keys_without_transformer_prefix(checkpoints, loaded, tmp_path):
  """The hub's GPT-2 checkpoints were saved from `GPT2Model`: `h.0.attn...`, `wte.weight`."""
  _, folder = checkpoints("gpt2")
  _, model = loaded("gpt2")
  hub = tmp_path / "hub"
  hub.mkdir()
  (hub / "config.json").write_text((folder / "config.json").read_text())
  tensors = safetensors.torch.load_file(folder / "model.safetensors")
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()
             if k != "lm_head.weight"}
  assert "h.0.attn.c_attn.weight" in tensors
  safetensors.torch.save_file(tensors, hub / "model.safetensors")
  np.testing.assert_array_equal(forward(from_pretrained(hub), IDS), forward(model, IDS))


LOAD_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    import jax, jax.numpy as jnp
    from flax import nnx
    from adaprelora_jax.models import from_pretrained

    def rss_mb():
      with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    jnp.ones(1).block_until_ready()
    before = rss_mb()
    model = from_pretrained(sys.argv[1])
    jax.block_until_ready(nnx.state(model))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(json.dumps(dict(before=before, peak=peak)))
""")


def test_loading_raises_peak_rss_by_at_most_one_and_a_half_checkpoints(tmp_path):
  """A ~30 MB checkpoint in 10 MB shards, loaded in a fresh process."""
  import transformers

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
      num_attention_heads=8, num_key_value_heads=4)
  folder = tmp_path / "ckpt"
  transformers.LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="10MB")
  files = list(folder.glob("*.safetensors"))
  assert len(files) >= 3
  size_mb = sum(f.stat().st_size for f in files) / 2**20
  assert size_mb > 25
  env = dict(PYTHONPATH=str(Path(adaprelora_jax.__file__).parents[1]), JAX_PLATFORMS="cpu",
             PATH="/usr/bin:/bin")
  # Linux carries the spawning process's peak RSS into the child's ru_maxrss across exec:
  # a small intermediate Python spawns the measured one, so its baseline is not pytest's.
  launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
  command = [sys.executable, "-c", launcher, sys.executable, "-c", LOAD_SCRIPT, str(folder)]
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  rise = stats["peak"] - stats["before"]
  assert rise <= 1.5 * size_mb, f"peak RSS rose {rise:.1f} MB for a {size_mb:.1f} MB checkpoint"
  assert rise >= 0.9 * size_mb  # the weights really were loaded into this process


# Bad checkpoints: the error names the file and the tensor.


def test_missing_folder_and_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
    from_pretrained(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty/config\.json"):
    from_pretrained(tmp_path / "empty")


def test_unknown_model_type(checkpoints, tmp_path):
  folder = checkpoints.copy("llama", tmp_path / "bert")
  config = json.loads((folder / "config.json").read_text())
  config["model_type"] = "bert"
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"bert/config\.json.*unsupported model_type 'bert'"):
    from_pretrained(folder)


def test_unsupported_rope_type(checkpoints, tmp_path):
  folder = checkpoints.copy("llama", tmp_path / "yarn")
  config = json.loads((folder / "config.json").read_text())
  config["rope_parameters"] = dict(rope_type="yarn", factor=4.0, rope_theta=1e4)
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json.*unsupported rope_type 'yarn'"):
    from_pretrained(folder)


def _rewrite(folder: Path, change) -> None:
  file = folder / "model.safetensors"
  tensors = safetensors.torch.load_file(file)
  change(tensors)
  safetensors.torch.save_file(tensors, file)


def test_missing_tensor(checkpoints, tmp_path):
  folder = checkpoints.copy("llama", tmp_path / "missing")
  _rewrite(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing/model\.safetensors: tensor "
                     r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
    from_pretrained(folder)


def test_wrong_shape(checkpoints, tmp_path):
  folder = checkpoints.copy("mistral", tmp_path / "shape")
  _rewrite(folder, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight":
                                       torch.zeros(64, 64)}))
  with pytest.raises(ValueError, match=r"shape/model\.safetensors: tensor "
                     r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(64, 64\).*"
                     r"needs \(32, 64\)"):
    from_pretrained(folder)


def test_truncated_file(checkpoints, tmp_path):
  folder = checkpoints.copy("gpt2", tmp_path / "cut")
  file = folder / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:len(data) - 1000])
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: truncated safetensors file: "
                     r"tensor '.*' needs bytes up to"):
    from_pretrained(folder)
  file.write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: truncated"):
    from_pretrained(folder)


def test_missing_shard_and_no_weights(tmp_path):
  folder = tmp_path / "shards"
  make_hf("llama", folder, max_shard_size="50KB")
  shard = sorted(folder.glob("*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=rf"{shard.name}: listed by .*index\.json "
                     r"\(for tensor '.*'"):
    from_pretrained(folder)
  for file in folder.glob("*.safetensors*"):
    file.unlink()
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
    from_pretrained(folder)


def test_sharding_needs_mesh(checkpoints):
  from adaprelora_jax.models import ShardingConfig

  _, folder = checkpoints("llama")
  with pytest.raises(ValueError, match="needs mesh"):
    from_pretrained(folder, sharding=ShardingConfig.fsdp_tp())


def test_remat_model_loads_and_matches(checkpoints, loaded):
  _, folder = checkpoints("llama")
  _, model = loaded("llama")
  remat = from_pretrained(folder, remat=True)
  np.testing.assert_array_equal(forward(remat, IDS), forward(model, IDS))
  assert jax.tree.structure(nnx.state(remat)) == jax.tree.structure(nnx.state(model))
