"""Where models run: the one resolution of ``auto`` devices, shared by generation, the filter and sample context.

A device that this machine does not have (``cuda`` without a visible GPU, ``cuda:7`` on a 2-GPU machine, ``mps``
off Apple silicon) is refused here, before any model is built, with a message that says what is available.
"""

from __future__ import annotations

import os
import shutil

from diffcoremix.errors import DeviceError, ToolchainError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other value is checked and returned as given.

    Raises:
        DeviceError: ``device`` is not a torch device name, or names a device this machine does not have.
    """
    import torch  # here, so that the command line's light commands start without loading torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(device, "not a device name (cpu, cuda, cuda:N, mps or auto)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(device, "no CUDA GPU is visible (torch.cuda.is_available() is False); use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(device, f"this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(device, "MPS (Apple GPU) is not available on this machine; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(device, "not supported here; use cpu, cuda, cuda:N, mps or auto")
    return device


def check_compiler(device: str, option: str = "compile") -> None:
    """Refuse ``torch.compile`` up front where its backend cannot build code on ``device``.

    Inductor, torch.compile's default backend, writes C++ (CPU) or Triton (CUDA) kernels and builds them with the
    machine's compiler at the first call: without one, a run fails minutes in with a long traceback.

    Args:
        device: a resolved device (``cpu``, ``cuda:0``).
        option: the option that asked for compilation, in Python spelling (``compile``, ``torchcompile``): the
            error names it so, and the command line as its flag (``--torchcompile``).

    Raises:
        ToolchainError: no compiler that torch.compile can use is installed.
    """
    if device.startswith("cuda"):
        # Triton builds its launcher with the C compiler it finds as $CC, cc, gcc or clang.
        found = any(shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c)
        if not found:
            raise ToolchainError(option, "a C compiler for torch.compile on CUDA", "install gcc")
        return
    if not _cpp_compiler_found():
        raise ToolchainError(option, "a C++ compiler for torch.compile on CPU", "install g++")


def _cpp_compiler_found() -> bool:
    """Whether inductor finds its C++ compiler (``torch._inductor.config.cpp.cxx``: ``$CXX`` or ``g++``)."""
    try:
        from torch._inductor import cpp_builder, exc
    except ImportError:  # another torch layout: look for the usual names ourselves
        return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True
