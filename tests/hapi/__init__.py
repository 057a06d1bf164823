"""The local HAPI FHIR JPA server used by tests, CI and the demo (see launcher.py, README.md)."""
