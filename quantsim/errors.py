"""The one error type the command line turns into a single clear line and exit code 2."""


class QuantsimError(Exception):
    """Bad input or an unsupported model: the message is shown to the user as is."""
