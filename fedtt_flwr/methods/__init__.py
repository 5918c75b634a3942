"""PEFT methods: one registry (:mod:`.registry`), one module per method family, one model builder (:mod:`.build`).

Adding a method: a module here declaring ``METHODS = (Method(...),)`` and one line in ``registry.FAMILIES``.
The app's method list, the strategy choice, the client's state, the byte report, adapter files, the CLI and the
benchmark grid all read the registry. ``build_model`` & co. load on first use, so the configuration can read the
registry without importing the models.
"""

from __future__ import annotations

import importlib

from .registry import Method, ReportShapes, all_methods, get_method, method_names

_LAZY = {"build_model": "build", "prompt_task": "build", "head_pooling": "build", "resolve": "build",
         "Resolved": "build", "add_lora": "lora", "lora_targets": "lora"}
__all__ = ["Method", "ReportShapes", "all_methods", "get_method", "method_names", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
