"""A caching pull-through proxy for GitLab's PyPI package registry."""

__version__ = "0.1.0"
