"""The HTTP server: ``create_app(settings)`` is the composition root."""

from .app import create_app

__all__ = ["create_app"]
