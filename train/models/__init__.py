"""Architectures by name (training side only)."""

from train.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
