"""API keys and what each may do: global admin, or viewer / editor / admin per project."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from ..errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated, project_not_found
from ..records import ROLES, ApiKey, NewApiKey
from . import ids, validation
from .ports import MetadataStore

_RANK = {role: i for i, role in enumerate(ROLES)}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its user, and its roles."""

    key_id: str
    user: str
    is_admin: bool
    roles: Mapping[str, str]

    def visible_projects(self) -> tuple[str, ...] | None:
        """The projects this key may see; ``None`` means all of them."""
        return None if self.is_admin else tuple(sorted(self.roles))

    def can_see(self, project_id: str) -> bool:
        return self.is_admin or project_id in self.roles

    def require(self, project_id: str, role: str, *, what: str | None = None) -> None:
        """Raise unless this key holds ``role`` (or more) in the project.

        A key with no role at all gets :class:`NotFound`, so that ids of other projects leak nothing.
        """
        if not isinstance(project_id, str) or "\x00" in project_id:  # no id holds a NUL
            raise NotFound(what) if what else project_not_found(repr(project_id))
        if self.is_admin:
            return
        held = self.roles.get(project_id)
        if held is None:
            raise NotFound(what) if what else project_not_found(project_id)
        if _RANK[held] < _RANK[role]:
            raise PermissionDenied(
                f"This API key is a {held} in project {project_id}; this needs {role}",
                hint=f"Ask a project admin for a key with the {role} role.",
            )

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("This needs a global admin API key")


class AuthService:
    def __init__(self, store: MetadataStore):
        self.store = store

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise Unauthenticated(
                "No API key was sent",
                hint="Run `modeldepot login --url URL --api-key KEY`, or send an X-API-Key header.",
            )
        digest = hash_secret(secret.strip())
        # Looked up by the hash of the secret (an index probe reveals nothing about the secret);
        # the comparison itself is constant time.
        stored = self.store.find_key_by_hash(digest)
        if stored is None or not hmac.compare_digest(stored.secret_hash, digest) or stored.key.revoked:
            raise Unauthenticated("Invalid API key", hint="Check the key, or ask an admin for a new one.")
        key = stored.key
        return Principal(key_id=key.id, user=key.user, is_admin=key.is_admin, roles=dict(key.roles))

    def _new(
        self,
        *,
        name: str,
        user: str,
        is_admin: bool,
        roles: dict[str, str],
        secret: str | None,
        create: Callable[[ApiKey, str], object] | None = None,
    ) -> NewApiKey:
        """A new key, stored by ``create`` (default: the store's ``create_key``)."""
        secret = secret or "md_" + secrets.token_urlsafe(32)
        key = ApiKey(
            id=ids.key_id(),
            name=name,
            user=user,
            is_admin=is_admin,
            roles=roles,
            created_at=datetime.now(UTC),
        )
        (create or self.store.create_key)(key, hash_secret(secret))
        return NewApiKey(key=key, secret=secret)

    def bootstrap(self, secret: str | None) -> NewApiKey | None:
        """Create the first admin key when none exists (``secret`` from MODELDEPOT_BOOTSTRAP_ADMIN_KEY).

        Replicas starting together on a new database make one key between them: each tries, and the
        store lets only the first in (the others, given the same secret, had failed on its hash)."""
        if self.store.count_keys() > 0:
            return None
        if secret is not None and len(secret.strip()) < 16:
            raise InvalidInput("MODELDEPOT_BOOTSTRAP_ADMIN_KEY must be at least 16 characters long")
        made: list[bool] = []
        new = self._new(
            name="bootstrap admin",
            user="admin",
            is_admin=True,
            roles={},
            secret=secret.strip() if secret else None,
            create=lambda key, secret_hash: made.append(self.store.create_first_key(key, secret_hash)),
        )
        return new if made[0] else None

    def create_key(
        self,
        principal: Principal,
        *,
        project_id: str | None,
        role: str | None,
        admin: bool = False,
        name: str = "",
        user: str | None = None,
    ) -> NewApiKey:
        name = validation.text(name, "Key name", 200)
        user = validation.name(user, "User name") if user is not None else None
        if admin:
            principal.require_admin()
            return self._new(name=name, user=user or principal.user, is_admin=True, roles={}, secret=None)
        if project_id is None or role is None:
            raise InvalidInput(
                "A key needs a project and a role, or --admin",
                hint="e.g. `keys create --project pr… --role viewer`",
            )
        if role not in ROLES:
            raise InvalidInput(f"Role {role!r} is not known", hint=f"Use one of: {', '.join(ROLES)}.")
        principal.require(project_id, "admin")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        return self._new(
            name=name, user=user or principal.user, is_admin=False, roles={project_id: role}, secret=None
        )

    def list_keys(self, principal: Principal, project_id: str | None) -> list[ApiKey]:
        if project_id is None:
            if principal.is_admin:
                return self.store.list_keys(None)
            return [k for k in self.store.list_keys(None) if k.id == principal.key_id]
        principal.require(project_id, "admin")
        return self.store.list_keys(project_id)

    def revoke(self, principal: Principal, key_id: str) -> ApiKey:
        stored = self.store.get_key(key_id)
        if stored is None:
            raise NotFound(f"API key {key_id} not found")
        key = stored.key
        if not principal.is_admin and key.id != principal.key_id:
            if key.is_admin or not key.roles:
                raise NotFound(f"API key {key_id} not found")
            for project_id in key.roles:
                principal.require(project_id, "admin", what=f"API key {key_id} not found")
        self.store.revoke_key(key_id, datetime.now(UTC))
        return dataclasses.replace(key, revoked=True)

    def principal_for_key(self, key_id: str) -> Principal:
        """Who signed a presigned URL, as that key stands now: a revoked or deleted key no longer counts."""
        stored = self.store.get_key(key_id) if isinstance(key_id, str) else None
        if stored is None or stored.key.revoked:
            raise Unauthenticated(
                "The API key that signed this URL is no longer valid",
                hint="Ask for a new URL with a valid key.",
            )
        key = stored.key
        return Principal(key_id=key.id, user=key.user, is_admin=key.is_admin, roles=dict(key.roles))
