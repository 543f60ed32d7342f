"""Routes that speak the REST protocol of the ``gradient`` CLI 2.0.6 (models and projects).

A thin adapter over the same services as ``/api/v1``: models and projects made here are ordinary ones.
Mounted at the root so that ``PAPERSPACE_CONFIG_HOST=http://HOST:PORT`` is all a Gradient user sets.
The wire contract it follows is ``gradient-wire-contract.md``; what it answers where Gradient's
service was vaguer (default project, unzipping, ``url``) is described in the README.
"""

from . import models, projects
from .routing import router

__all__ = ["models", "projects", "router"]
