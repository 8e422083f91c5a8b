"""The one error type the product shows its users."""


class InputError(Exception):
    """Bad user input. The CLI prints its message as one line on stderr and exits with code 2."""
