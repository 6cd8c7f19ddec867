"""Dependencies of the routes, as Annotated aliases: SettingsDep, RegistryDep, CeleryDep, …

Everything comes from `app.state`, filled by create_app and its lifespan, so tests pass
their own Settings to create_app and nothing reads the environment behind their back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.api.prometheus import ServiceMetrics
from service.core.config import Settings
from service.core.registry import Registry

if TYPE_CHECKING:
    from celery import Celery

    from service.serving.index_store import IndexStore


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_celery(request: Request) -> Celery:
    celery_app: Celery = request.app.state.celery
    return celery_app


def get_index_store(request: Request) -> IndexStore:
    store: IndexStore = request.app.state.index_store
    return store


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
CeleryDep = Annotated["Celery", Depends(get_celery)]
IndexStoreDep = Annotated["IndexStore", Depends(get_index_store)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
