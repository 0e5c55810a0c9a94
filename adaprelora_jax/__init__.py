"""adaprelora-jax: AdaPreLoRA and the LoRA optimizer family as Optax transforms."""

from adaprelora_jax._src.adaprelora import AdaPreLoRAState
from adaprelora_jax._src.adaprelora import adaprelora
from adaprelora_jax._src.adaprelora import scale_by_adaprelora
from adaprelora_jax._src.pairing import LoRADimensionNumbers
from adaprelora_jax._src.pairing import lora_pairs

__version__ = "0.1.0"

__all__ = (
    "AdaPreLoRAState",
    "LoRADimensionNumbers",
    "adaprelora",
    "lora_pairs",
    "scale_by_adaprelora",
)
