"""Reading labelled image data: class-folder listings, robust image decoding, class names, and ``scan``.

``ClassFolderDataset`` (the torch ``Dataset``) is imported lazily so that scan workers do not import torch.
"""

from __future__ import annotations

from typing import Any

from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.classnames import class_names, load_class_map, prompt_name
from diffcoremix.data.folder import DatasetListing, Finding, ImageItem, list_images
from diffcoremix.data.images import IMAGE_EXTENSIONS, decode_image, is_image_file, open_image, to_rgb
from diffcoremix.data.scan import PROBLEM_KINDS, ScanReport, scan_dataset
from diffcoremix.data.sources import DataConfig, Sources, usable_sources

__all__ = [
    "IMAGE_EXTENSIONS",
    "PROBLEM_KINDS",
    "ClassFolderDataset",
    "DataConfig",
    "DatasetListing",
    "Finding",
    "ImageItem",
    "ScanConfig",
    "ScanReport",
    "Sources",
    "class_names",
    "decode_image",
    "is_image_file",
    "list_images",
    "load_class_map",
    "open_image",
    "prompt_name",
    "scan_dataset",
    "to_rgb",
    "usable_sources",
]


def __getattr__(name: str) -> Any:
    if name == "ClassFolderDataset":
        from diffcoremix.data.dataset import ClassFolderDataset

        return ClassFolderDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
