"""The memory of negatives of SimCLRv2 (§2, after MoCo): a momentum copy of the encoder and projection head
(simclr_tf.methods.momentum.MomentumNetwork), and a queue of its projections of past batches that NT-Xent uses as
extra negatives (--memory_size, --memory_momentum).

The variant implemented, and why:
- With a memory, every key an anchor is compared with comes from the momentum network, as in MoCo: the anchors are
  the online network's projections of both views; view a's positive is the momentum network's projection of view b,
  its negatives the momentum projections of the batch's other images (both views, gathered across replicas) and the
  queued keys. No gradient flows into the keys. --memory_size=0 has no momentum network: plain SimCLR.
- Why not positives and in-batch negatives from the online network, with only the queue from the momentum network
  (the memory as "extra negatives" and nothing else)? That was our first version, and it did not learn on CIFAR-10
  (batch 128, K = 4096, m = 0.999, 12 epochs): kNN accuracy 28.8% after 4 epochs, then the projections died at
  step ~2900 (loss exactly 2·ln(K + 2B − 1)); this version learns (README). Our reading: when the positive comes
  from one network and the queued negatives from another, the anchor can tell a negative by the network that made
  it, and the loss falls by drifting away from the lagging momentum copy rather than by learning the images. With
  every key from one slowly moving network, keys differ only by image.
- Each step (inside it): the momentum network projects both views of the batch, in training mode (batch statistics,
  as the online network; its own moving statistics follow its activations, as in MoCo); its projections,
  normalised with --hidden_norm, are the step's keys. After the update (the loop's after_update): w_ema =
  m·w_ema + (1 − m)·w over the trainable weights, with w the weights the step just produced, and the step's 2·B
  keys replace the oldest ones in the queue, wrapping around.
- Slots not yet written are masked out of the loss, so the first steps see only the keys there are.
- The momentum network starts as a copy of the online network. Queue, position, fill and the momentum weights are
  checkpointed with the model (the checkpoint names 'momentum_network' and 'memory').
- Under several replicas each replica projects its share of the batch; the keys are gathered in replica order, so
  every replica writes the same global batch to its copy of the queue: two replicas give what one device gives.
"""

import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.methods import losses
from simclr_tf.methods.momentum import MomentumNetwork, assign_everywhere


class KeyQueue(tf.Module):
  """A first-in-first-out memory of `size` keys of dimension `dim`: keys [size, dim], the next slot to write
  (position) and how many slots hold a key (filled)."""

  def __init__(self, size: int, dim: int, name='memory'):
    super().__init__(name=name)
    self.size = size
    self.keys = tf.Variable(tf.zeros([size, dim]), trainable=False, name='keys')
    self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name='position')
    self.filled = tf.Variable(0, dtype=tf.int64, trainable=False, name='filled')

  def valid(self) -> tf.Tensor:
    """[size] bool: the slots that hold a key."""
    return tf.range(self.size, dtype=tf.int64) < self.filled

  def enqueued(self, keys: tf.Tensor):
    """(keys, position, filled) after writing `keys` [n, dim] (n <= size) at the position, wrapping around."""
    count = tf.cast(tf.shape(keys)[0], tf.int64)
    slots = (self.position + tf.range(count)) % self.size
    new_keys = tf.tensor_scatter_nd_update(self.keys, slots[:, None], tf.cast(keys, self.keys.dtype))
    return new_keys, (self.position + count) % self.size, tf.minimum(self.filled + count, self.size)

  def variables_in_order(self):
    return [self.keys, self.position, self.filled]


class NegativesMemory:
  """The momentum network and the queue of its keys, for one pretraining run (build it in the strategy's scope)."""

  def __init__(self, config: Config, online, momentum_network):
    self.config = config
    self.ema = MomentumNetwork(online, momentum_network)
    self.queue = KeyQueue(config.memory_size, config.proj_out_dim)

  def start_from_online(self) -> None:
    """The momentum network becomes a copy of the online network (every weight, moving statistics included)."""
    self.ema.start_from_online()

  def negatives(self):
    """(keys [K, D], valid [K] bool) to pass to losses.nt_xent_against_keys."""
    return tf.convert_to_tensor(self.queue.keys), self.queue.valid()

  def keys(self, images: tf.Tensor):
    """(k1, k2): the momentum network's normalised projections of the two views (`images`: the views stacked along
    the batch axis, local batch), without gradient, gathered across replicas ([global batch, D] each): the step's
    keys, for losses.nt_xent and then the queue."""
    projections = self.ema.target(images, training=True)['proj_head_output']
    keys = tf.stop_gradient(tf.cast(projections, tf.float32))
    if self.config.hidden_norm:
      keys = tf.math.l2_normalize(keys, axis=-1)
    k1, k2 = tf.split(keys, 2, axis=0)
    return losses.cross_replica_concat(k1), losses.cross_replica_concat(k2)

  def after_update(self, keys) -> None:
    """After the step: EMA of the weights, then the step's keys (k1, k2, as keys() gathered them) enqueued."""
    self.ema.update(self.config.memory_momentum)
    assign_everywhere(self.queue.variables_in_order(), self.queue.enqueued(tf.concat(keys, axis=0)))

  def checkpoint_objects(self) -> dict:
    return {'momentum_network': self.ema.target, 'memory': self.queue}

  def fill(self) -> tf.Tensor:
    """How full the queue is, in [0, 1]."""
    return tf.cast(self.queue.filled, tf.float32) / self.queue.size
