"""`from_pretrained`: a Hugging Face checkpoint folder into an NNX model, weight kind
by weight kind, straight into the weights' shardings.

The model is first built abstractly (`nnx.eval_shape`, no memory). Then, for each
parameter, the per-layer tensors are copied from memory-mapped safetensors into one
host buffer (transposed to `(in, out)` where Hugging Face stores `(out, in)`, cast to
`dtype`) and placed with `jax.device_put` on the parameter's `NamedSharding`; the
buffer is dropped before the next parameter. Host memory so holds at most the model
plus one weight kind (on CPU, where `device_put` keeps the buffer, just the model).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adaprelora_jax.models import naming
from adaprelora_jax.models.base import CausalLM
from adaprelora_jax.models.checkpoint import Checkpoint, TensorInfo
from adaprelora_jax.models.hf_config import read_hf_config
from adaprelora_jax.models.model import build_model
from adaprelora_jax.models.sharding import ShardingConfig

_ALIGN = 64


def from_pretrained(
    path: str | Path,
    *,
    dtype=jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    sharding: ShardingConfig | None = None,
    compute_dtype=jnp.float32,
    remat: bool = False,
) -> CausalLM:
  """The model of a Hugging Face checkpoint folder with its weights.

  Args:
    path: folder with `config.json` and `model.safetensors`, or shards and
      `model.safetensors.index.json`. `model_type` picks the architecture
      (`gpt2`, `llama`, `mistral`, `qwen2`).
    dtype: parameter dtype; None keeps the stored dtype (bf16 stays bf16).
    mesh: place each weight on this mesh (default sharding `ShardingConfig.fsdp_tp()`);
      call the model inside `jax.set_mesh(mesh)`.
    sharding: the partition specs (needs `mesh`).
    compute_dtype: activation dtype.
    remat: rematerialise each layer in the backward pass.

  Raises:
    FileNotFoundError: no `config.json` or no safetensors file.
    ValueError: unknown `model_type`, a missing or mis-shaped tensor, a truncated file;
      the message names the file and the tensor.
  """
  folder = Path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: not a checkpoint folder")
  config = read_hf_config(folder)
  checkpoint = Checkpoint(folder)
  if sharding is not None and mesh is None:
    raise ValueError("sharding= needs mesh=")
  if mesh is not None and sharding is None:
    sharding = ShardingConfig.fsdp_tp()
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    abstract = nnx.eval_shape(lambda: build_model(
        config, dtype=jnp.float32 if dtype is None else dtype, compute_dtype=compute_dtype,
        sharding=sharding, remat=remat))
    graphdef, state = nnx.split(abstract)
    loaded, used = [], set()
    for nnx_path, variable in nnx.to_flat_state(state):
      value, names = _load(checkpoint, abstract, nnx_path, variable, dtype, mesh)
      loaded.append((nnx_path, variable.replace(value)))
      used.update(names)
    _warn_unused(checkpoint, used)
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


# Checkpoint tensors that are not weights (old buffers) or are tied to the embedding.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq", "lm_head.weight")


def _warn_unused(checkpoint: Checkpoint, used: set[str]) -> None:
  unused = sorted(n for n in checkpoint.tensors
                  if n not in used and not n.endswith(_IGNORED_SUFFIXES))
  if unused:
    warnings.warn(f"{checkpoint.source}: {len(unused)} tensors not used by the model "
                  f"(does config.json match the weights?): {', '.join(unused[:5])}"
                  f"{' ...' if len(unused) > 5 else ''}", stacklevel=3)


def _find(checkpoint: Checkpoint, model, name: str) -> TensorInfo:
  if name in checkpoint:
    return checkpoint.info(name)
  # GPT-2 checkpoints on the hub were saved from `GPT2Model`: no `transformer.` prefix.
  if model.config.is_gpt2 and name.startswith("transformer."):
    short = name[len("transformer."):]
    if short in checkpoint:
      return checkpoint.info(short)
  return checkpoint.info(name)  # raises, naming the checkpoint file and tensor


def _aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised array on a 64-byte boundary (so CPU `device_put` can alias it)."""
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  start = -raw.ctypes.data % _ALIGN
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _load(checkpoint, model, nnx_path, variable, dtype, mesh) -> jax.Array:
  shape = tuple(variable.get_value().shape)
  stacked = naming.is_stacked(model, nnx_path)
  transposed = naming.hf_transposed(model, nnx_path)
  layers = range(model.config.num_layers) if stacked else [None]
  infos = [_find(checkpoint, model, naming.hf_param_name(model, nnx_path, layer))
           for layer in layers]
  per_layer = shape[1:] if stacked else shape
  expected = per_layer[::-1] if transposed else per_layer
  for info in infos:
    if info.shape != expected:
      raise ValueError(f"{info.file}: tensor {info.name!r} has shape {info.shape}, the "
                       f"config ({checkpoint.folder / 'config.json'}) needs {expected}")
  target = infos[0].dtype if dtype is None else np.dtype(dtype)
  buffer = _aligned_empty(shape, target)
  for i, info in enumerate(infos):
    source = checkpoint.read(info.name)
    buffer[i if stacked else ...] = source.T if transposed else source
    del source  # unmaps the tensor
  spec = variable.get_metadata().get("out_sharding") if mesh is not None else None
  names = [info.name for info in infos]
  if mesh is None:
    return jax.device_put(buffer), names
  return jax.device_put(buffer, NamedSharding(mesh, P(*(spec or ())))), names
