"""adaprelora-jax: AdaPreLoRA and the LoRA optimizer family as Optax transforms."""

from adaprelora_jax._src.adaprelora import AdaPreLoRAState
from adaprelora_jax._src.adaprelora import adaprelora
from adaprelora_jax._src.adaprelora import scale_by_adaprelora
from adaprelora_jax._src.lora_pro import LoRAProState
from adaprelora_jax._src.lora_pro import lora_pro
from adaprelora_jax._src.lora_pro import scale_by_lora_pro
from adaprelora_jax._src.lora_rite import LoRARITEState
from adaprelora_jax._src.lora_rite import lora_rite
from adaprelora_jax._src.lora_rite import scale_by_lora_rite
from adaprelora_jax._src.loraplus import loraplus
from adaprelora_jax._src.loraplus import scale_by_loraplus
from adaprelora_jax._src.pairing import LoRADimensionNumbers
from adaprelora_jax._src.pairing import lora_pairs
from adaprelora_jax._src.registry import optimizers
from adaprelora_jax._src.scaled_adamw import ScaledAdamWState
from adaprelora_jax._src.scaled_adamw import scale_by_scaled_adamw
from adaprelora_jax._src.scaled_adamw import scaled_adamw

__version__ = "0.1.0"

__all__ = (
    "AdaPreLoRAState",
    "LoRADimensionNumbers",
    "LoRAProState",
    "LoRARITEState",
    "ScaledAdamWState",
    "adaprelora",
    "lora_pairs",
    "lora_pro",
    "lora_rite",
    "loraplus",
    "optimizers",
    "scale_by_adaprelora",
    "scale_by_lora_pro",
    "scale_by_lora_rite",
    "scale_by_loraplus",
    "scale_by_scaled_adamw",
    "scaled_adamw",
)
