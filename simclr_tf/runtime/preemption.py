"""Stopping a run when the machine is taken away: SIGTERM (how preemptible VMs and schedulers stop a job) and
Ctrl-C (SIGINT) end the run after the current loop of steps, with a checkpoint of the step reached.

On one host (one device, mirrored replicas) the signal is caught here. A cluster (multi-worker, TPU) uses TF's own
tf.distribute.experimental.PreemptionCheckpointHandler, which makes every worker save at the same step when any of
them is told to stop (see training.loop).
"""

import contextlib
import signal
import threading
from typing import Callable, Optional

from simclr_tf.errors import Interrupted  # noqa: F401  (raised by the modes; re-exported)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _SignalHandling:
  """While active (in the main thread; elsewhere nothing is caught), SIGNALS go to self._handle(signum, frame);
  the previous handlers come back on exit."""
  _previous: dict

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    raise NotImplementedError


class StopRequests(_SignalHandling):
  """Catches SIGTERM and SIGINT while active (in the main thread; elsewhere it catches nothing) and remembers the
  first: `requested` is its number or None. Restores the previous handlers on exit."""

  def __init__(self):
    self.requested: Optional[int] = None

  def _handle(self, signum, frame):
    del frame
    if self.requested is None:
      self.requested = signum

  @property
  def name(self) -> str:
    return signal.Signals(self.requested).name if self.requested else ''


class AbortOnSignals(_SignalHandling):
  """While active (in the main thread), SIGTERM and SIGINT raise Interrupted(describe(signal name)) at once, so
  that a short piece of work (an export) stops and cleans up after itself. Inside deferred() (a step that must
  not be cut in half) a signal is only remembered. Either way `received` is the first signal's number: the raise
  lands in whatever code runs, and TF's has bare `except:` clauses that turn it into another error (a TypeError
  from tf.function's tracing) or drop it, so the caller asks `received`, not the exception, whether a signal came
  (interrupted() is its error). Restores the previous handlers on exit."""

  def __init__(self, describe: Callable[[str], str]):
    self.describe = describe
    self._deferring = False
    self.received: Optional[int] = None

  def _handle(self, signum, frame):
    del frame
    self.received = self.received or signum
    if not self._deferring:
      raise self.interrupted()

  def interrupted(self) -> Interrupted:
    """The error that ends the work for the first signal received."""
    return Interrupted(self.describe(signal.Signals(self.received).name), self.received)

  @contextlib.contextmanager
  def deferred(self):
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False


def abort_on_signals(describe: Callable[[str], str]) -> AbortOnSignals:
  return AbortOnSignals(describe)


def cluster_handler(strategy, manager, describe_stop):
  """TF's PreemptionCheckpointHandler for a cluster (multi-worker or TPU): when any worker gets SIGTERM (or, on
  Google Cloud, a maintenance or preemption notice), every worker saves a checkpoint through `manager` at the same
  step and the run stops with `Interrupted` (describe_stop() gives its message)."""
  import tensorflow as tf

  def stop():
    raise Interrupted(describe_stop(), int(signal.SIGTERM))

  return tf.distribute.experimental.PreemptionCheckpointHandler(
      strategy.cluster_resolver, manager, termination_config=tf.distribute.experimental.TerminationConfig(
          exit_fn=stop))
