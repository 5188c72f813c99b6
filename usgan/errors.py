"""The one exception family the CLI turns into a one-line message and a non-zero exit."""


class UserError(ValueError):
    """A problem with the user's input (file, option, config); str(error) names the file and the problem."""


class Stopped(KeyboardInterrupt):
    """A command stopped by a signal after a clean stop; signum: the one that asked (SIGINT, SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
