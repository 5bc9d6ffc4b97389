"""Errors the user can act on: they name the file (or config key) and the problem.

The CLI prints them as one line and exits with status 2 instead of a traceback.
"""


class InputError(Exception):
    """Bad input: a missing or malformed file, an unknown class, a wrong config value."""

    def __init__(self, where, problem=None):
        if problem is None:  # rebuilt from its message alone (see _split_message)
            where, problem = _split_message(str(where))
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


def _split_message(message):
    """(where, problem) from a message alone. Unpickling passes "where: problem"; torch's
    DataLoader re-raises an error of a worker process with a message that ends with the
    worker's traceback, whose last line is "module.SomeError: where: problem"."""
    lines = message.strip().splitlines() or [""]
    last = lines[-1]
    name, sep, rest = last.partition(": ")
    if sep and name.endswith("Error") and " " not in name and len(lines) > 1:
        last = rest
    where, sep, problem = last.partition(": ")
    return (where, problem) if sep else ("input", last)


def rerun(rule, command):
    """What to do about a damaged file the pipeline wrote: rerun the stage that wrote it."""
    return (f"rerun the stage that wrote it (snakemake --forcerun {rule}; by hand: "
            f"tag2mask {command})")
