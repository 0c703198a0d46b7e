"""The devnet together with the real daemon: the session that runs both, its health checks, the live
view and the ``dapi devnet`` command. Sits above both: it imports ``dapi.devnet`` and ``dapi.daemon``,
and neither imports it."""
