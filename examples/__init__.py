"""Example migrations (importable so a migration file can name ``examples.<name>.transform``)."""
