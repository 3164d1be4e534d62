"""Errors shared by modules that must not import each other (a config error is raised
by the config loader and by the plug-in registries' option checks)."""


class ConfigError(ValueError):
    """A config file, override or command-line value names an unknown key, or has a
    value of the wrong type or outside its range (the message names the key)."""
