"""Talking to a FHIR server: the connection (fhirclient + one requests session), auth, retries."""

from .client import FhirConnection, Reply

__all__ = ["FhirConnection", "Reply"]
