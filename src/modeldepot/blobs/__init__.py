"""Blob stores: content-addressed bytes behind one small interface (services.ports.BlobStore)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .local import LocalBlobStore

if TYPE_CHECKING:
    from .s3 import S3BlobStore

__all__ = ["LocalBlobStore", "open_blob_store"]


def open_blob_store(url: str) -> LocalBlobStore | S3BlobStore:
    """The store a ``--blob-url`` names: ``file:///PATH`` or ``s3://BUCKET/PREFIX?endpoint=URL``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from urllib.request import url2pathname

        return LocalBlobStore(url2pathname(parsed.path))
    if parsed.scheme == "s3":
        try:
            from .s3 import S3BlobStore
        except ModuleNotFoundError as exc:  # boto3 is an extra: say which one, in one line
            raise ValueError(str(exc)) from None
        return S3BlobStore.from_url(url)
    raise ValueError(
        f"Unsupported blob URL {url!r}: use file:///PATH or s3://BUCKET/PREFIX?endpoint=URL&region=NAME"
    )
