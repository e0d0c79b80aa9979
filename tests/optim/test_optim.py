import keras
import numpy as np
import tensorflow as tf

from simclr_tf.config import Config
from simclr_tf.optim.lars import LARS
from simclr_tf.optim.schedule import WarmupCosine, scaled_learning_rate


def direct_lars(w, g, v, lr, wd, eta, m, adapt):
  if adapt:
    g = g + wd * w
    wn, gn = np.linalg.norm(w), np.linalg.norm(g)
    trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
    lr = lr * trust
  v = m * v + lr * g
  return w - v, v


def test_lars_update_matches_direct_formula():
  rng = np.random.default_rng(0)
  kernel = keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), name='kernel')
  gamma = keras.Variable(rng.normal(size=(4,)).astype(np.float32), name='gamma')
  zero = keras.Variable(np.zeros((2,), np.float32), name='kernel')  # zero norm: trust ratio 1
  opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay_rate=1e-2, eta=0.001)
  variables = [kernel, gamma, zero]
  expected = [v.numpy().copy() for v in variables]
  velocity = [np.zeros_like(e) for e in expected]
  for _ in range(3):
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    opt.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    for i, (adapt, g) in enumerate(zip([True, False, True], grads)):
      expected[i], velocity[i] = direct_lars(expected[i], g, velocity[i], 0.5, 1e-2, 0.001, 0.9, adapt)
  for v, e in zip(variables, expected):
    np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)


def test_warmup_cosine_and_scaling():
  s = WarmupCosine(peak=2.0, warmup_steps=10, total_steps=110)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 1.0)
  np.testing.assert_allclose(float(s(10)), 2.0)
  np.testing.assert_allclose(float(s(60)), 1.0, atol=1e-6)
  np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-6)
  assert float(WarmupCosine(1.0, 0, 10)(0)) == 1.0
  assert scaled_learning_rate(0.3, 4096, 'linear') == 0.3 * 16
  np.testing.assert_allclose(scaled_learning_rate(0.075, 4096, 'sqrt'), 4.8)


def test_an_epoch_ends_at_the_same_step_for_the_schedule_checkpoints_and_measurements():
  from simclr_tf.optim.build import Period, epoch_period, total_steps
  config = Config(train_batch_size=128, train_epochs=40)
  every_10 = epoch_period(config, 2000, 10)  # 156.25 steps
  ends = [s for s in range(1, 700) if every_10.holds(s)]
  assert ends == [156, 312, 468, 625] and ends[-1] == total_steps(config, 2000)
  assert [every_10.next_after(s) for s in (0, 155, 156, 624)] == [156, 156, 312, 625]
  for n, b in ((2000, 128), (50000, 128), (7, 3), (10, 10), (3, 8)):
    period = epoch_period(Config(train_batch_size=b), n, 1)
    for epochs in range(1, 30):  # a run of E epochs ends where its epoch E ends
      assert period.holds(total_steps(Config(train_batch_size=b, train_epochs=epochs), n)), (n, b, epochs)
  assert [s for s in range(1, 13) if Period(4).holds(s)] == [4, 8, 12]
