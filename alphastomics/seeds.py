"""Seeds that depend only on (seed, step, rank, stream), never on what ran before.

Every random draw of a training step, a validation pass or a sampled section is seeded from such a tuple, so a
resumed run draws exactly what an uninterrupted one would, and draws of different purposes (the streams below)
never share a generator state.
"""

from __future__ import annotations

import zlib

import numpy as np

DROPOUT_STREAM, NOISE_STREAM, VAL_STREAM, DIAG_STREAM, SAMPLE_STREAM = 1, 2, 3, 4, 5


def _seed_of(entropy: list[int]) -> int:
    """A 63-bit seed mixed from ``entropy`` (fits torch.Generator.manual_seed and NumPy alike)."""
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> 1)


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed that depends only on its arguments (not on what ran before: resumable)."""
    return _seed_of([seed, step, rank, stream])


def name_seed(seed: int, name: str) -> int:
    """A 63-bit seed of (seed, name), e.g. a parameter's name: stable across processes (crc32, not the
    salted ``hash``)."""
    return _seed_of([seed, zlib.crc32(name.encode())])
