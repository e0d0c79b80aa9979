"""The networks: encoder families by name (ENCODERS, see registry.py), the projection and supervised heads
(heads.py) and the SimCLR model that joins them (simclr.py: SimCLRModel, build_model)."""

from simclr_tf.models.registry import ENCODER_FIELDS, ENCODERS

__all__ = ['ENCODERS', 'ENCODER_FIELDS']
