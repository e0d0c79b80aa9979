"""Training: the loop every training mode shares (loop.py). A mode describes a Task; fit trains it."""

from simclr_tf.training.loop import (LoopState, Measurement, Task, TrainingRun, fit, make_replica_update,
                                     make_train_loop)

__all__ = ['Task', 'Measurement', 'TrainingRun', 'fit', 'make_train_loop', 'make_replica_update', 'LoopState']
