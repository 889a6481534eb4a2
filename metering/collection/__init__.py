"""Cost collection for ``cost_endpoint`` providers: claims, the cost client, validation and back-off."""
