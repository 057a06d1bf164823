"""The Helios FHIR Server (a second, independent FHIR R4 server) for tests: launcher.py, README.md."""
