# SyncRun.calls: each run's calls to ATH Móvil and their failures by kind, which monitoring
# adds up (athm_sync.monitoring); and an index for counting the held payments at each scrape.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("athm_sync", "0011_checkout"),
    ]

    operations = [
        migrations.AddField(
            model_name="syncrun",
            name="calls",
            field=models.JSONField(blank=True, default=dict, verbose_name="ATH Móvil calls"),
        ),
        migrations.AddIndex(
            model_name="payment",
            index=models.Index(
                condition=models.Q(("status__in", ["MISMATCHED"])),
                fields=["updated_at"],
                name="athm_payment_held_idx",
            ),
        ),
    ]
