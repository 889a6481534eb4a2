"""Finance exports: report queries, their writers and the export use case.

Arrow's C++ code takes its allocator from ``ARROW_DEFAULT_MEMORY_POOL`` once, when pyarrow is
first used, and the Parquet writer's encoders and the CSV reader's parsers allocate from it
whatever pool they are given. Its default, mimalloc, keeps what an export frees for reuse,
and the part it kept grew with the length of the export. It is set here, before any module
of this package imports pyarrow (``metering.exports.copy_writers`` has the figures).
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
