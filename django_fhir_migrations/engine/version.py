"""The release number, in the engine (which needs it for User-Agent and AuditEvents) and
re-exported by the package root; setup.py reads it from this file."""

__version__ = "0.2.0"
