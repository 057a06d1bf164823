"""The performance benchmark of django-fhir-migrations (`make bench`, `benchmarks/run.py`)."""
