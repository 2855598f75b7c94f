"""Monitoring from outside: an HTTP health endpoint and Prometheus metrics, both opt-in.

- :mod:`athm_sync.monitoring.views`: ``health`` (JSON, 200 or 503, the verdict of
  ``manage.py athm_sync --health``) and ``metrics`` (the Prometheus exposition);
- :mod:`athm_sync.monitoring.urls`: both, for ``path("athm/", include(...))``; nothing here is
  served by ``include("athm_sync.urls")``;
- :mod:`athm_sync.monitoring.snapshot`: what both read from the database, in a few indexed
  queries, at each request (runs are separate processes: their numbers live in the database);
- :mod:`athm_sync.monitoring.metrics`: the ``prometheus_client`` collector, for the
  ``metrics`` view or a shop's own registry (``pip install "django-athm-sync[metrics]"``).

See docs/operations.md, "Monitoring". Nothing is imported at module load, so the app imports
and works without ``prometheus_client``.
"""
