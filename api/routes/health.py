"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import DatabaseDep
from api.responses import OrjsonResponse
from metering.metrics import registry

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    """Answers while the process serves requests; checks nothing else."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"description": "the database is unreachable"}})
async def readyz(db: DatabaseDep) -> OrjsonResponse:
    """Ready when the database answers ``SELECT 1``."""
    try:
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the database means not ready
        return OrjsonResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
    return OrjsonResponse({"status": "ok", "database": db.dialect})


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics() -> Response:
    """Records ingested, cost batches and latency, provider errors, pending age, quarantined and unpriced counts."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
