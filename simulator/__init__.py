"""A simulated inference provider (inference route + cost endpoint with fault injection) for tests,
benchmarks and the demo. Lives outside ``metering/`` because it is a FastAPI app."""
