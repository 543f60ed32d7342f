"""Aliases: named pointers per (project, model name), e.g. ``production`` → a model id."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ..errors import InvalidInput, NotFound, project_not_found
from ..records import Alias
from .auth import Principal
from .models import ModelService
from .ports import MetadataStore

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class AliasService:
    def __init__(self, store: MetadataStore, models: ModelService):
        self.store = store
        self.models = models

    @staticmethod
    def _check(alias: str) -> str:
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise InvalidInput(
                f"Alias {alias!r} is not allowed",
                hint="Use letters, digits, '.', '_' and '-', e.g. 'production'.",
            )
        return alias

    def set(self, principal: Principal, project_id: str, model_name: str, alias: str, model_id: str) -> Alias:
        alias = self._check(alias)
        principal.require(project_id, "editor")
        model = self.models.get(principal, model_id, with_files=False)
        if model.project_id != project_id or model.name != model_name:
            raise InvalidInput(
                f"Model {model_id} is {model.name!r} in project {model.project_id}, not {model_name!r} in {project_id}",
                hint="An alias points at a version of the model with that name in that project.",
            )
        if model.state != "ready":
            raise InvalidInput(f"Model {model_id} is {model.state}; only a ready model can be aliased")
        record = Alias(
            project_id=project_id,
            model_name=model_name,
            alias=alias,
            model_id=model_id,
            updated_at=datetime.now(UTC),
            updated_by=principal.user,
        )
        self.store.set_alias(record)
        return record

    def get(self, principal: Principal, project_id: str, model_name: str, alias: str) -> Alias:
        principal.require(project_id, "viewer")
        found = self.store.get_alias(project_id, model_name, alias)
        if found is None:
            raise NotFound(f"Alias {alias!r} of {model_name!r} not found in project {project_id}")
        return found

    def list_aliases(self, principal: Principal, project_id: str) -> list[Alias]:
        principal.require(project_id, "viewer")
        if not self.store.project_exists(project_id):
            raise project_not_found(project_id)
        return self.store.list_aliases(project_id)

    def delete(self, principal: Principal, project_id: str, model_name: str, alias: str) -> None:
        self.get(principal, project_id, model_name, alias)
        principal.require(project_id, "editor")
        self.store.delete_alias(project_id, model_name, alias, principal.user)
