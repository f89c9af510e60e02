"""Models made by ``diffcoremix finetune``, as generation reads them.

A fine-tuned MODEL folder is a diffusers pipeline folder (``--method full``) or LoRA weights
(``pytorch_lora_weights.safetensors``, ``--method lora``), plus ``finetune.json``: the provenance (base model,
data hash, steps, loss curve) and the sampling settings that suit the model. ``generate --model MODEL`` and
``generate --lora MODEL`` read it: its sampling settings fill what the user leaves unset (before the preset's),
and a summary of it goes into every manifest record made with the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffcoremix.errors import DiffCoReMixError

FINETUNE_FILE = "finetune.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""The file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` reads."""
SUMMARY_KEYS = (
    "model",
    "method",
    "base_model",
    "base_revision",
    "data_sha256",
    "images",
    "steps",
    "vae_steps",
    "final_loss",
    "loss_sha256",
    "weights_sha256",
)
"""The facts of ``finetune.json`` that every manifest record made with the model carries (its ``finetune``
field); ``model`` is the folder's path."""


class FinetunedModelError(DiffCoReMixError):
    """A folder given as a fine-tuned model is not one (or its record is damaged)."""


def read_finetune_info(path: str | Path) -> dict[str, Any] | None:
    """The ``finetune.json`` of a model folder, or None when ``path`` is not a fine-tuned model folder.

    Raises:
        FinetunedModelError: the file exists but is not a JSON object.
    """
    file = Path(path).expanduser() / FINETUNE_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FinetunedModelError(f"{file} is damaged ({err}): rerun `diffcoremix finetune`") from None
    if not isinstance(info, dict):
        raise FinetunedModelError(f"{file} is not a fine-tuning record: rerun `diffcoremix finetune`")
    return info


def base_model(model: str) -> str:
    """The model that ``model`` was fine-tuned from (recursively), or ``model`` itself."""
    seen = set()
    while model not in seen and not model.startswith("builtin:"):
        seen.add(model)
        try:
            info = read_finetune_info(model)
        except (FinetunedModelError, OSError):
            return model
        if info is None or not isinstance(info.get("base_model"), str):
            return model
        model = info["base_model"]
    return model


def finetune_summary(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """What a manifest record says about the fine-tuned model at ``path``."""
    return {**{key: info.get(key) for key in SUMMARY_KEYS}, "model": str(Path(path).expanduser().resolve())}
