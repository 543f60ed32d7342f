"""The Python SDK: one method per API operation, over httpx."""

from .client import Client, Progress

__all__ = ["Client", "Progress"]
