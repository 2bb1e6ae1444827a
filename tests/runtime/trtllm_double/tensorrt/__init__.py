"""Test double: only the version string manifest.py reads."""

__version__ = "10.14.1.48"
