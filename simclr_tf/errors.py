"""The errors a user can cause and fix. run.py prints each as one line (no traceback) and exits non-zero."""


class UserError(Exception):
  """A mistake the user can fix (a flag, a path, a file): run.py prints it as one line and exits with code 2."""


class Interrupted(UserError):
  """The run was stopped by a signal after saving; exit code 128 + the signal number, as shells report it."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def first_line(error: Exception, limit: int = 200) -> str:
  """The first line of an exception's message (TF's errors keep theirs in .message), at most `limit` characters."""
  text = str(getattr(error, 'message', error)).strip()
  return (text.splitlines() or [type(error).__name__])[0][:limit]


def tf_error_summary(error: Exception) -> str:
  """The informative line of a TF runtime error (its first lines are 'Graph execution error:' and a node)."""
  lines = [l.strip() for l in str(getattr(error, 'message', error)).splitlines()]
  useful = [l for l in lines if l and not l.startswith(('Graph execution error', 'Detected at node', '[[', 'File ',
                                                         'Traceback')) and not l.endswith(':')]
  return (useful[-1] if useful else lines[0])[:200]
