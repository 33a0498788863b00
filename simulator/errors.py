"""The one error type a user sees: a single line that names the place and what is allowed."""


class KvsimError(Exception):
    """A mistake in user input (scenario, trace, command line). The CLI prints it and exits 2."""
