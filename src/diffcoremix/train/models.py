"""Classifiers by name: any timm model, and the CIFAR ResNet-20 of this project (``resnet20``).

They live in :mod:`diffcoremix.classifiers`, below the stages that read a trained run; the names stay here too.
"""

from __future__ import annotations

from diffcoremix.classifiers import check_model_name, create_model, load_init, read_state_dict

__all__ = ["check_model_name", "create_model", "load_init", "read_state_dict"]
