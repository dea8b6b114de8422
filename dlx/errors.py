"""Errors that are the user's to fix: launch.py prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (config, command line, missing data). The message says what and how to fix it."""


class ConfigError(UserError):
    """A config value is unknown, of the wrong type, or inconsistent with the machine."""


class DataError(UserError):
    """A data set is missing or unreadable; the message names the command that installs it."""
