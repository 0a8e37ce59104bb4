"""UserError: the one base of every failure whose message is written for the person who caused it."""


class UserError(Exception):
    """A failure a user can act on: its text says what went wrong and what to do, and names no secret.

    Entry points relay it as it is (the page and API as a Gradio error, the command lines as
    `error: ...`); any other exception is a bug, logged on the server and answered with an apology.
    """


class SettingError(UserError, ValueError):
    """A flag, preset or environment variable with a value that cannot be used; the message names it."""
