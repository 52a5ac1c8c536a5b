"""ckpt_rank: rank pre-trained checkpoints by how well they will transfer to a downstream task."""

__version__ = '0.1.0'
