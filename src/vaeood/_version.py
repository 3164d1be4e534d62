"""The package version, in a module of its own so that submodules (reports stamp it)
can read it without importing the package back."""

__version__ = "0.1.0"
