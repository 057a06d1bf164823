"""The table-less MigrationStatus model: no table is created (managed=False); migrating only
registers its content type and the `view_fhir_migrations` permission."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="MigrationStatus",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ],
            options={
                "verbose_name": "migration status",
                "verbose_name_plural": "migration status",
                "permissions": [("view_fhir_migrations", "Can view FHIR migration status")],
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
