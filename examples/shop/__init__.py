"""The shop example: a legacy shop schema migrated to a new one (see README.md)."""
