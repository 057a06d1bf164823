"""Django system checks (`manage.py check`); filled in by the checks issue."""
