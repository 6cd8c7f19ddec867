"""The one place that asks torch about CUDA."""

from __future__ import annotations

import torch

from training.errors import ConfigError


def resolve_device(preference: str = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a torch.device.

    "auto" picks CUDA when torch sees a GPU, otherwise the CPU. Called when a job
    starts, never at import time (CUDA initialised in a parent process breaks forks).
    """
    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={preference!r} requested but torch sees no CUDA device")
        return torch.device(pref)
    raise ConfigError(f"device={preference!r}: expected auto, cpu, cuda or cuda:N")
