"""The one exception family the CLI turns into a one-line message and a non-zero exit."""


class UserError(ValueError):
    """A problem with the user's input (file, option, config); str(error) names the file and the problem."""
