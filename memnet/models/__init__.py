"""Whole networks (NTM, DNC, MemN2N, ...); :func:`load` rebuilds one exported by ``memnet export``."""

from memnet.models.pretrained import load

__all__ = ["load"]
