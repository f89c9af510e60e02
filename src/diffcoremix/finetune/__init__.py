"""Fine-tuning the generator on the user's data (``diffcoremix finetune``): LoRA or full, resumable.

Example:
    >>> from diffcoremix.finetune import FinetuneConfig, finetune
    >>> result = finetune("data/", "model/", FinetuneConfig(preset="tiny", max_steps=200))  # doctest: +SKIP
    >>> result.info["final_loss"]  # doctest: +SKIP
"""

from diffcoremix.finetune.config import FinetuneConfig, resolve
from diffcoremix.finetune.loop import FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "resolve"]
