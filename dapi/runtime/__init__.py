"""Plumbing every component needs: retry backoff, owned background tasks, graceful-stop signals,
an embedded HTTP server and atomic JSON files. Depends on nothing else in ``dapi`` but logging."""
