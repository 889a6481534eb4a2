"""What the API, the jobs and the export command do once their modules are loaded."""

from __future__ import annotations

import gc


def loaded_objects_out_of_the_collector() -> None:
    """Everything loaded so far leaves the cyclic collector's view (``gc.freeze``), after a
    collection so no garbage is frozen with it.

    A loop that allocates young objects by the thousand triggers full collections, and each
    walked every object of the libraries as well. Young objects are collected as before.
    """
    gc.collect()
    gc.freeze()
