"""Errors the user can act on: they name the file (or config key) and the problem.

The CLI prints them as one line and exits with status 2 instead of a traceback.
"""


class InputError(Exception):
    """Bad input: a missing or malformed file, an unknown class, a wrong config value."""

    def __init__(self, where, problem):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
