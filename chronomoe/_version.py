"""The package version, in one place (the package, the manifest and the command read it)."""

__version__ = "0.1.0"
