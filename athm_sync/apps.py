from django.apps import AppConfig


class AthmSyncConfig(AppConfig):
    name = "athm_sync"
    verbose_name = "ATH Móvil sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from athm_sync import checks  # noqa: F401  (registers the system checks)
