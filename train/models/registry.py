"""One registry of architectures by name, in the manner of timm's register_model/create_model.

Every factory returns an nn.Module with a `preset` attribute (train.presets.Preset):
the input size and normalisation the model was built for. Serving code never imports
this module: it loads TorchScript files (landmark.contract).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register `fn(num_classes, **kw)` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered architecture."""
    _import_all()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build architecture `name` with a `num_classes`-way head."""
    _import_all()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](num_classes=num_classes, **kwargs)
    model.arch = name
    return model


def _import_all() -> None:
    from train.models import scratch, transfer  # noqa: F401  (register on import)
