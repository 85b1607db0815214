"""Shim for tools that still call ``setup.py``: everything (metadata, dependencies, extras) is in pyproject.toml."""

from setuptools import setup

setup()
