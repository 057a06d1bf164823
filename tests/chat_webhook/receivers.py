"""Word for word the README's example ("Signals"): tell a chat channel what happened."""

import requests
from django.conf import settings
from django.dispatch import receiver

from django_fhir_migrations.signals import migration_applied, migration_failed


@receiver([migration_applied, migration_failed])
def tell_the_team(sender, name, state_id, by, duration, error, **kwargs):
    if error:
        text = f"FHIR migration {name} failed on {state_id}: {error}"
    else:
        text = f"FHIR migration {name} applied on {state_id} by {by} in {duration:.1f} s"
    requests.post(settings.CHAT_WEBHOOK_URL, json={"text": text}, timeout=5)
