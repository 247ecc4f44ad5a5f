"""The project's own errors: bad input files, bad datasets, bad checkpoints, bad arguments.

Every script runs under tools.args.cli, which prints these as one line (`error: ...`) and exits
with status 1 (2 for a UsageError, with the usage line). Any other exception is a bug, not bad
input, and keeps its traceback. Every error class of the project is defined here.

    ProjectError
    ├── FormatError        a file exists but does not hold what it should
    │   └── CheckpointError    a checkpoint is missing, unreadable or does not fit the model
    │       └── ResumeError        a resume checkpoint that is unreadable or of another run
    ├── MissingFileError   an input file does not exist (also a FileNotFoundError)
    ├── OutputError        an output file cannot be written: disk full, permissions (also an OSError)
    ├── DatasetError       a dataset file or folder is missing or malformed
    ├── EvaluationError    a prediction is missing or does not match its ground truth (evaluate.py)
    ├── PrepareError       a dataset builder's input is bad or its output fails verification
    ├── UsageError         arguments that cannot work together (also a ValueError)
    ├── SetupError         the environment lacks something, e.g. offline weights (also a RuntimeError)
    ├── NonFiniteError     a loss or a weight became NaN/inf during training (also a RuntimeError)
    └── Preempted          training stopped on SIGTERM/SIGUSR1 after saving its resume state

The second bases keep `except ValueError` and the like working for callers that used them.
"""


class ProjectError(Exception):
    """Base of the errors caused by the user's input. The message names the file or flag."""


class FormatError(ProjectError):
    """A file exists but does not hold what it should. The message names the file."""


class CheckpointError(FormatError):
    """A checkpoint file is missing, unreadable, or does not fit the model. Names the file."""


class DatasetError(ProjectError):
    """A dataset file or folder is missing or malformed. The message names it."""


class MissingFileError(ProjectError, FileNotFoundError):
    """An input file does not exist. The message names it."""


class OutputError(ProjectError, OSError):
    """An output file could not be written (disk full, no permission). The message names it."""


class UsageError(ProjectError, ValueError):
    """Arguments that are individually valid but cannot work together, or out of range."""


class SetupError(ProjectError, RuntimeError):
    """The environment lacks something the run needs; the message says how to provide it."""


class NonFiniteError(ProjectError, RuntimeError):
    """A loss term or a weight is NaN or infinite; the message says which and where (the cause is
    the settings or the data, e.g. too high a learning rate, not the code)."""


class Preempted(ProjectError):
    """A training run asked to stop (SIGTERM, SIGUSR1: a scheduler's notice before it kills the
    job) saved its resume state and stopped; the message names the file and how to continue.
    Not bad input, but a non-zero exit: the run is not finished."""


class ResumeError(CheckpointError, ValueError):
    """A resume checkpoint that is unreadable or from another kind of run. Names the file."""


class EvaluationError(ProjectError):
    """A prediction is missing or does not match its ground truth. The message names the file."""


class PrepareError(ProjectError):
    """A dataset builder's input is missing or inconsistent, or its output fails verification."""
