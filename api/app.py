"""The FastAPI application: ``create_app(settings)`` builds it, the lifespan owns the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.fast_lane import AuthorizeFastLane
from api.middleware import BodySizeLimit
from api.routes import (
    accounts,
    adjustments,
    alerts,
    authorize,
    authorize_subrequest,
    billing,
    billing_page,
    credit_grants,
    exports,
    finance_reconciliations,
    health,
    providers,
    top_ups,
    usage,
    usage_views,
    webhook_endpoints,
    webhooks,
)
from api.routes.docs import install_docs
from metering.config import Settings, get_settings, set_settings
from metering.db import Database
from metering.hot_path.collector import loaded_objects_out_of_the_collector
from metering.migrate import upgrade_on_open

# Starlette tries routes in order: the hot-path routes come first.
ROUTERS = [
    authorize.router,
    authorize_subrequest.router,
    usage.router,
    health.router,
    accounts.router,
    providers.internal_router,
    providers.public_router,
    billing.router,
    alerts.router,
    credit_grants.router,
    adjustments.router,
    top_ups.router,
    webhook_endpoints.router,
    usage_views.router,
    exports.router,
    finance_reconciliations.router,
    webhooks.router,
    billing_page.router,
]


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """Build the app. A given ``database`` is used as is (tests); otherwise the lifespan makes one,
    whose PostgreSQL statements run under ``settings.api_statement_timeout_ms``."""
    settings = settings or get_settings()
    set_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        if owned:
            await upgrade_on_open(settings)
            app.state.database = Database(settings.database_url, statement_timeout_ms=settings.api_statement_timeout_ms)
        # The app's long-lived objects (modules, routes, schemas): otherwise every full collection
        # walked them all while the event loop waited, pauses that set the authorize route's p99.
        loaded_objects_out_of_the_collector()
        try:
            yield
        finally:
            if owned:
                await app.state.database.dispose()

    app = FastAPI(
        title="Metering",
        version="0.1.0",
        description="Billing and usage metering for an inference router. Money is integer nano-USD.",
        lifespan=lifespan,
        docs_url=None,  # served by ``install_docs`` from local assets, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service_tokens = [token.encode() for token in settings.service_token_list]
    if database is not None:
        app.state.database = database
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_docs(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, larger=finance_reconciliations.LARGE_BODIES)
    if settings.authorize_fast_lane:
        # Added last, so it runs first: inside only the framework's outermost error layer.
        app.add_middleware(AuthorizeFastLane, max_bytes=settings.max_body_bytes)
    return app
