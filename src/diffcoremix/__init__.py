"""diffcoremix: context-guided, filtered diffusion augmentation for image classifiers (DiffCoRe-Mix)."""

from __future__ import annotations

__version__ = "0.1.0"
