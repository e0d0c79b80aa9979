"""Runs run.py (flags from the command line) with tfds replaced by tfds.testing.mock_data, so a tfds dataset such
as cifar10 works offline: `python tests/mock_tfds_run.py --dataset=cifar10 ...`. MOCK_EXAMPLES sets the size.
(The mock's download_and_prepare needs no network: the check that the machine can download is told so.)"""

import os
import runpy
import sys

import tensorflow_datasets as tfds

from simclr_tf.data import inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, 'run.py')

if __name__ == '__main__':
  inputs._unreachable = lambda host, timeout=0: None
  with tfds.testing.mock_data(num_examples=int(os.environ.get('MOCK_EXAMPLES', '32'))):
    sys.argv = [RUN_PY] + sys.argv[1:]
    runpy.run_path(RUN_PY, run_name='__main__')
