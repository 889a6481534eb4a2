"""Errors of usage ingest. A bad record is not an error (it is rejected in the answer); a bad body is."""

from metering.errors import InvalidInput


class ValidationError(InvalidInput):
    """The body of a usage POST as a whole is malformed (not JSON, no ``records`` list, too many).

    Named like the framework's own request-validation error so every 422 of the API
    carries the same ``"error": "ValidationError"``.
    """
