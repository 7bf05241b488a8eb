"""The package version, in one place (read by pyproject.toml's dynamic version and by __init__)."""

__version__ = "0.2.0"
