"""Optional integrations, each behind an extra; the core app never imports them.

- ``athm_sync.contrib.celery``: Celery tasks (``pip install "django-athm-sync[celery]"``).
- ``athm_sync.contrib.tasks``: Django's tasks framework, ``django.tasks`` on Django 6 or the
  ``django-tasks`` package on 5.2 (``pip install "django-athm-sync[tasks]"``).

Both wrap :mod:`athm_sync.contrib.jobs`, which holds what a queued task does.
"""
