"""Blob stores: content-addressed bytes behind one small interface (services.ports.BlobStore)."""

from __future__ import annotations

from urllib.parse import urlparse

from .local import LocalBlobStore

__all__ = ["LocalBlobStore", "open_blob_store"]


def open_blob_store(url: str) -> LocalBlobStore:
    """The store a ``--blob-url`` names. ``file:///path`` now; ``s3://`` arrives with the S3 backend."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from urllib.request import url2pathname

        return LocalBlobStore(url2pathname(parsed.path))
    raise ValueError(f"Unsupported blob URL {url!r}: use file:///PATH")
