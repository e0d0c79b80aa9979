"""Starts `python run.py ARGS` processes for the tests without paying TensorFlow's import each time (about 6 s of
every run.py process on these CPUs): this process imports what run.py imports (TensorFlow and Keras, quietly, as
run.py does; none of it creates a device or starts TensorFlow's runtime), then forks one child per command. The
child is a new process that runs run.py as `python run.py` runs it: as __main__, with its argv, environment and
working directory, its stdin, stdout and stderr on the file descriptors the test sent; it ends with run.py's exit
code, or by a signal, as a process of its own would. The test signals and waits for it by its pid.

Protocol (conftest.RunPyServer is the client), over a SOCK_SEQPACKET socket whose fd is argv[1]: a request is one
message, JSON {"id", "argv", "env", "cwd"} with three file descriptors (the child's 0, 1, 2); answered by {"id", "pid"}
when the child starts and {"id", "returncode"} when it ends (-S if a signal S ended it). Requests may come while
children run. Environment variables that TensorFlow reads at import are the ones this process started with; the
client sends only commands whose environment differs from that in variables read at run time."""

import json
import os
import runpy
import select
import signal
import socket
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, 'run.py')


def preload():
  sys.path.insert(0, ROOT)
  import run  # noqa: F401  (run.py's own module-level set-up: TF_CPP_MIN_LOG_LEVEL, absl, the config)
  run.import_tensorflow_quietly()
  from tensorflow.python.eager import context
  assert not context.context()._initialized, 'importing TensorFlow initialised its runtime: forking is not safe'
  sys.path.remove(ROOT)
  del sys.modules['run']  # run.py runs anew as __main__ in each child


def child(request, fds, channel):
  """In the forked child: become `python run.py ARGS` and never return."""
  code = 1
  try:
    channel.close()
    for target, fd in enumerate(fds):
      os.dup2(fd, target)
    for fd in set(fds):
      if fd > 2:
        os.close(fd)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    tempfile.tempdir = None  # read TMPDIR again, as a new process does
    sys.argv = [RUN_PY, *request['argv']]
    sys.path[0] = ROOT  # what `python run.py` puts first
    try:
      runpy.run_path(RUN_PY, run_name='__main__')
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException as e:  # what Python prints for an uncaught exception, and its exit code
      import traceback
      traceback.print_exc()
      code = 1
      if isinstance(e, KeyboardInterrupt):  # Python ends by the signal itself
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    import atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
  finally:
    os._exit(code)


def main():
  preload()
  channel = socket.socket(fileno=int(sys.argv[1]))
  answer = lambda **kw: channel.send(json.dumps(kw).encode())
  children = {}  # pid: request id
  while True:
    ready = select.select([channel], [], [], 0.02 if children else None)[0]
    for pid, request_id in list(children.items()):
      done, status = os.waitpid(pid, os.WNOHANG)
      if done:
        del children[pid]
        answer(id=request_id, returncode=os.waitstatus_to_exitcode(status))
    if not ready:
      continue
    message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
    if not message:  # the test process ended: so do the commands it started
      for pid in children:
        os.kill(pid, signal.SIGKILL)
      return
    request = json.loads(message)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      child(request, fds, channel)
    for fd in set(fds):
      os.close(fd)
    children[pid] = request['id']
    answer(id=request['id'], pid=pid)


if __name__ == '__main__':
  main()
