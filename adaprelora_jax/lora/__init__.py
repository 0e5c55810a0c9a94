"""LoRA on any Flax NNX model: adapters, merging, and PEFT's adapter format.

`apply_lora(model, LoRAConfig(...), rngs=...)` adds `nnx.LoRAParam` factors `lora_a`
`(in, r)` and `lora_b` `(r, out)` beside the kernels of the targeted linear layers, so
`nnx.Optimizer(model, adaprelora(lr, lora_scale=lora_scale_of(model)), wrt=nnx.LoRAParam)`
trains them and nothing else. `merge_lora` / `unmerge_lora` fold them into the kernels
and back; `save_peft_adapter` / `load_peft_adapter` exchange them with PyTorch's PEFT.
See docs/lora.md.
"""

from adaprelora_jax.lora.apply import apply_lora
from adaprelora_jax.lora.apply import lora_modules
from adaprelora_jax.lora.apply import lora_scale_of
from adaprelora_jax.lora.apply import lora_state
from adaprelora_jax.lora.config import LoRAConfig
from adaprelora_jax.lora.layer import LoRALinear
from adaprelora_jax.lora.merge import merge_lora
from adaprelora_jax.lora.merge import unmerge_lora
from adaprelora_jax.lora.peft import load_peft_adapter
from adaprelora_jax.lora.peft import read_peft_config
from adaprelora_jax.lora.peft import save_peft_adapter

__all__ = (
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "load_peft_adapter",
    "lora_modules",
    "lora_scale_of",
    "lora_state",
    "merge_lora",
    "read_peft_config",
    "save_peft_adapter",
    "unmerge_lora",
)
