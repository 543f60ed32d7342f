"""Projects: named containers of models."""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import Conflict, InvalidInput, PermissionDenied, project_not_found
from ..records import Project
from . import ids, validation
from .auth import Principal
from .ports import MetadataStore

# The project that models go to when an admin key names none (see ProjectService.default_for_models).
DEFAULT_PROJECT = "default"


class ProjectService:
    def __init__(self, store: MetadataStore):
        self.store = store

    def create(
        self,
        principal: Principal,
        name: str,
        *,
        tags: list[str] | None = None,
        repo_name: str | None = None,
        repo_url: str | None = None,
    ) -> Project:
        project = Project(
            id=ids.project_id(),
            name=validation.name(name, "Project name"),
            created_at=datetime.now(UTC),
            created_by=principal.user,
            tags=validation.tags(tags),
            repo_name=validation.text(repo_name, "Repository name", 200) or None,
            repo_url=validation.text(repo_url, "Repository URL", 2000) or None,
        )
        self.store.create_project(project)
        if not principal.is_admin:
            # Whoever creates a project administers it.
            self.store.grant_role(principal.key_id, project.id, "admin")
        return project

    def get(self, principal: Principal, project_id: str) -> Project:
        principal.require(project_id, "viewer")
        project = self.store.get_project(project_id)
        if project is None:
            raise project_not_found(project_id)
        return project

    def list_projects(self, principal: Principal, *, tag: str | None = None) -> list[Project]:
        projects = self.store.list_projects(principal.visible_projects())
        return [p for p in projects if tag is None or tag in p.tags]

    def rename(self, principal: Principal, project_id: str, name: str) -> Project:
        self.get(principal, project_id)
        principal.require(project_id, "admin")
        self.store.update_project(project_id, name=validation.name(name, "Project name"))
        return self.get(principal, project_id)

    def set_tags(self, principal: Principal, project_id: str, tags: list[str]) -> Project:
        self.get(principal, project_id)
        principal.require(project_id, "editor")
        self.store.set_project_tags(project_id, validation.tags(tags))
        return self.get(principal, project_id)

    def delete(self, principal: Principal, project_id: str, *, force: bool = False) -> None:
        self.get(principal, project_id)
        principal.require(project_id, "admin")
        count = self.store.count_models(project_id)
        if count and not force:
            raise Conflict(
                f"Project {project_id} still has {count} model(s) (uploads in progress included)",
                hint="Delete them first, or pass --force (force=true) to delete the project with its models.",
            )
        self.store.delete_project(project_id)

    def default_for_models(self, principal: Principal) -> Project:
        """The project of a model whose client named none (``gradient models upload`` without --projectId).

        A key that may write to exactly one project uses that one. A global admin key uses the oldest
        project named ``default``, made on first use. Any other key has to name the project.
        """
        if principal.is_admin:
            found = [p for p in self.store.list_projects(None) if p.name == DEFAULT_PROJECT]
            if found:
                return min(found, key=lambda p: (p.created_at, p.id))
            return self.create(principal, DEFAULT_PROJECT)
        writable = []
        for project_id in sorted(principal.roles):
            try:
                principal.require(project_id, "editor")
            except PermissionDenied:
                continue
            writable.append(project_id)
        if len(writable) != 1:
            raise InvalidInput(
                f"Say which project the model belongs to: this API key may add models to {len(writable)} projects",
                hint="Pass --projectId PROJECT_ID (gradient) or --project PROJECT_ID (modeldepot).",
            )
        return self.get(principal, writable[0])
