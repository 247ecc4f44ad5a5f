"""The project's own errors: bad input files, bad datasets, bad checkpoints, bad arguments.

Every script runs under tools.args.cli, which prints these as one line (`error: ...`) and exits
with status 1. Any other exception is a bug, not bad input, and keeps its traceback.

    ProjectError
    ├── FormatError       a file exists but does not hold what it should
    │   └── CheckpointError   a checkpoint is missing, unreadable or does not fit the model
    ├── DatasetError      a dataset file or folder is missing or malformed
    └── UsageError        command-line arguments that cannot work together
"""


class ProjectError(Exception):
    """Base of the errors caused by the user's input. The message names the file or flag."""


class FormatError(ProjectError):
    """A file exists but does not hold what it should. The message names the file."""


class CheckpointError(FormatError):
    """A checkpoint file is missing, unreadable, or does not fit the model. Names the file."""


class DatasetError(ProjectError):
    """A dataset file or folder is missing or malformed. The message names it."""


class UsageError(ProjectError):
    """Command-line arguments that are individually valid but cannot work together."""
