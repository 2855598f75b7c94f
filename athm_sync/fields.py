"""Model fields that keep the app's datetimes aware and in UTC, whatever ``USE_TZ`` says.

With ``USE_TZ = True`` (Django's default) a ``DateTimeField`` already stores and returns aware
moments. With ``USE_TZ = False``, still supported and common in older shops, Django stores
naive times in ``TIME_ZONE`` and hands them back naive: SQLite refuses an aware value outright
("SQLite backend does not support timezone-aware datetimes"), PostgreSQL returns naive values
that cannot be compared with the aware ones ATH Móvil's answers become. ``AwareDateTimeField``
converts at the database boundary instead, so every caller in the app sees aware UTC:

- a value going to the database (a save, ``update()``, a filter, ``bulk_create``) that is aware
  is written as the naive local time Django expects; a naive one is taken to be local time
  already, as Django would;
- a value coming back (instances, ``values()``, aggregates) is made aware from ``TIME_ZONE``
  and turned to UTC;
- a naive value set on an instance (the shop's ``Payment.objects.create(created_at=...)``, the
  admin's forms, a default of ``timezone.now``) is read as local time and stored on the
  instance as aware UTC, so the instance a shop passes in compares like one read back.

Under ``USE_TZ = True`` it behaves exactly like ``DateTimeField``. Its ``deconstruct()`` names
``django.db.models.DateTimeField``: the column, the migrations and a shop's historical models
are those of a plain ``DateTimeField`` (swapping the class needs no migration, and SQLite does
not rebuild the tables for it).

A row inserted with raw SQL that leaves a column to its database default gets
:class:`DatabaseNow`, which on SQLite under ``USE_TZ = False`` is local time too (Django's own
``Now()`` is UTC there, which ``USE_TZ = False`` would read as local time, hours off).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone

from athm_sync import clock


def as_aware(value: Any) -> Any:
    """``value`` as an aware UTC datetime when it is a datetime (a naive one is local time in
    ``TIME_ZONE``, as Django reads naive values); anything else unchanged."""
    if not isinstance(value, datetime):
        return value
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.astimezone(UTC)


def as_stored(value: Any) -> Any:
    """``value`` as Django stores it: aware under ``USE_TZ = True``; under ``USE_TZ = False``
    an aware datetime becomes naive local time in ``TIME_ZONE``."""
    if settings.USE_TZ or not isinstance(value, datetime) or timezone.is_naive(value):
        return value
    return timezone.make_naive(value, timezone.get_default_timezone())


class _AwareAttribute(DeferredAttribute):
    """The field's attribute on an instance: whatever is set on it is kept aware (UTC)."""

    def __set__(self, instance: models.Model, value: Any) -> None:
        # Under USE_TZ = True a naive value is left for Django to warn about when it is saved.
        instance.__dict__[self.field.attname] = value if settings.USE_TZ else as_aware(value)


class AwareDateTimeField(models.DateTimeField):
    """A ``DateTimeField`` whose values are aware UTC datetimes in Python under any ``USE_TZ``
    and ``TIME_ZONE`` (module docstring)."""

    descriptor_class = _AwareAttribute

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.DateTimeField", args, kwargs

    def get_default(self) -> Any:
        if self.default is timezone.now:
            # Naive local time under USE_TZ = False (and a naive "now" is what clocks in tests
            # get wrong); the moment itself is what the default means.
            return clock.now()
        return super().get_default()

    def get_prep_value(self, value: Any) -> Any:
        return as_stored(super().get_prep_value(value))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return value if settings.USE_TZ else as_aware(value)

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        if self.auto_now or (self.auto_now_add and add):
            # DateTimeField's own pre_save asks timezone.now(): naive under USE_TZ = False.
            value = clock.now()
            setattr(model_instance, self.attname, value)
            return value
        return super().pre_save(model_instance, add)


class DatabaseNow(Now):
    """``Now()`` as a column's database default, in the time zone Django reads the column in.

    SQLite has no time zones: Django's ``Now()`` writes UTC there, right under ``USE_TZ =
    True`` and hours off under ``USE_TZ = False``, where a naive value means local time. This
    one writes local time then (SQLite's ``'localtime'``: the inserting process's zone, which
    Django sets to ``TIME_ZONE``). The default is compiled into the table when it is migrated, so
    it follows the ``USE_TZ`` of the ``migrate`` that made it. PostgreSQL's timestamps carry
    their zone and need nothing.
    """

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        if settings.USE_TZ:
            return super().as_sqlite(compiler, connection, **extra_context)
        return self.as_sql(
            compiler,
            connection,
            template="STRFTIME('%%%%Y-%%%%m-%%%%d %%%%H:%%%%M:%%%%f', 'NOW', 'localtime')",
            **extra_context,
        )
