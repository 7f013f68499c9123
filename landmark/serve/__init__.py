"""The HTTP service for photo backends (see landmark.serve.service)."""

from landmark.serve.service import Settings, create_app

__all__ = ["Settings", "create_app"]
