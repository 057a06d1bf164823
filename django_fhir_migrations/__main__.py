"""`python -m django_fhir_migrations ...`: the same as the `fhir-migrations` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m django_fhir_migrations"))
