"""``metering simulate-provider``: the provider simulator of the tests, as a server."""

from __future__ import annotations

import orjson
import typer
from rich.console import Console

from cli.params import check_port


def _faults_object(value: str) -> dict:
    """``--faults`` as a JSON object, or a usage error saying why not."""
    try:
        faults = orjson.loads(value) if value else {}
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(faults, dict):
        raise typer.BadParameter(f"must be a JSON object, got {value!r}")
    return faults


def simulate_provider(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(9100, help="Port to listen on (1-65535).", callback=check_port),
    seed: int = typer.Option(0, help="Seed of request IDs, costs and fault choices."),
    token: str = typer.Option("provider-token", help="Bearer token the cost endpoint expects."),
    faults: str = typer.Option(
        "",
        help='Faults as JSON, e.g. \'{"missing_fraction": 0.1, "error_burst": 3}\' (see POST /_sim/faults).',
        callback=_faults_object,
    ),
    missing: float = typer.Option(0.0, help="Fraction of known IDs left out of each answer."),
    slow: float = typer.Option(0.0, help="Seconds the cost endpoint waits before answering."),
    error_burst: int = typer.Option(0, help="The next N cost calls answer 503."),
) -> None:
    """Serve a simulated inference provider with a cost endpoint and runtime fault injection."""
    import uvicorn  # imported here: other commands should not pay for FastAPI at start-up
    from pydantic import ValidationError

    from simulator.app import create_simulator_app
    from simulator.state import SimulatorState

    state = SimulatorState(seed=seed, token=token)
    changes: dict = faults  # type: ignore[assignment]  # parsed by ``_faults_object``
    changes.setdefault("missing_fraction", missing)
    changes.setdefault("slow_seconds", slow)
    changes.setdefault("error_burst", error_burst)
    try:
        state.update_faults(changes)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise typer.BadParameter(problems, param_hint="the faults") from exc
    Console(stderr=True).print(
        f"simulated provider on http://{host}:{port}: POST /v1/chat/completions, POST /billing/costs (seed {seed})"
    )
    uvicorn.run(create_simulator_app(state), host=host, port=port, log_level="warning")
