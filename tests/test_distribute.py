"""The strategy's set-up: the linear backward walk that makes tracing on several replicas fast gives TF's own
result, and a mirrored strategy from make_strategy has it."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import op_selector  # pylint: disable=g-direct-tensorflow-import

from conftest import tiny_config
from simclr_tf.runtime import distribute


def a_graph():
  """A graph with branches, joins, a variable, a non-differentiable op and control dependencies."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [4, 3], name='x')
    w = tf.Variable(np.ones([3, 3], np.float32), name='w')
    h = tf.nn.relu(tf.matmul(x, w))
    y = tf.reduce_sum(h, axis=1)
    z = h * tf.cast(tf.argmax(h, axis=1)[:, None], tf.float32)  # argmax: no gradient
    with tf.control_dependencies([y.op]):
      out = tf.concat([z, tf.stack([y, y, y], axis=1)], axis=0) + tf.reduce_mean(x)
  return graph, x, h, y, z, out


def test_the_linear_walk_returns_what_tf_returns_in_the_same_order():
  assert distribute.linear_backward_walk()
  walk = op_selector.get_backward_walk_ops
  assert walk.linear
  graph, x, h, y, z, out = a_graph()
  cases = [dict(seed_ops=[out]), dict(seed_ops=out.op), dict(seed_ops=[out], stop_at_ts=[h]),
           dict(seed_ops=[out, z], inclusive=False, stop_at_ts=[x]),
           dict(seed_ops=[out], only_differentiable=True), dict(seed_ops=[out], control_inputs=True),
           dict(seed_ops=[out], within_ops=[out.op, z.op, h.op, y.op]), dict(seed_ops=[])]
  for case in cases:
    ours, theirs = walk(**case), walk.original(**case)
    assert [op.name for op in ours] == [op.name for op in theirs], case
  assert len(walk(seed_ops=[out])) > 10  # the cases walk somewhere


def test_a_mirrored_strategy_comes_with_the_linear_walk(monkeypatch):
  monkeypatch.setattr(op_selector, 'get_backward_walk_ops', getattr(
      op_selector.get_backward_walk_ops, 'original', op_selector.get_backward_walk_ops))
  strategy = distribute.make_strategy(tiny_config(strategy='mirrored', cpu_replicas=2))
  assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == 2
  assert getattr(op_selector.get_backward_walk_ops, 'linear', False)


@pytest.mark.parametrize('only_differentiable', [False, True])
def test_the_walk_through_a_cross_replica_gradient_finds_the_same_ops(only_differentiable):
  # The walk that custom_gradient runs on an all-reduce, on a graph that a mirrored replica step builds.
  distribute.linear_backward_walk()
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'], cross_device_ops=tf.distribute.ReductionToOneDevice())
  seen = []

  def replica(x):
    total = tf.distribute.get_replica_context().all_reduce('sum', tf.square(x) + 1.0)
    seen.append(total)
    return total

  graph = tf.function(lambda: strategy.run(replica, args=(tf.constant([1.0, 2.0]),))).get_concrete_function().graph
  walk = op_selector.get_backward_walk_ops
  for total in seen:
    ours = walk([total], only_differentiable=only_differentiable)
    theirs = walk.original([total], only_differentiable=only_differentiable)
    assert [op.name for op in ours] == [op.name for op in theirs]
  assert graph is not None and seen
