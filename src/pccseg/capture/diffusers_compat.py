"""What differs between the diffusers versions pccseg supports."""

from __future__ import annotations


def dtype_kwarg() -> str:
    """The ``from_pretrained`` keyword for the weights' dtype: ``dtype`` for diffusers versions that
    deprecate ``torch_dtype``, else ``torch_dtype``."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    except ImportError:
        return "torch_dtype"
