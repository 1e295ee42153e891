"""Every seeded random stream of the project, named in one place.

A stream is numpy's `default_rng([seed, STREAM_ID, *keys])` (or a torch generator seeded from the
run seed plus an offset). The ids are part of reproducibility: changing one changes results, so
they only ever get added to. (The generator's per-puzzle streams `[seed, i]` predate this table
and share its key space; they are kept so that the shipped datasets stay byte-identical.)
"""
from __future__ import annotations

import numpy as np

DATASET_SPLIT = 1  # tdrm.data.dataset: shuffle and split of equivalence classes, stored augmentations
TEACHER_STREAM = 2  # tdrm.data.stream: the teacher's stream of training puzzles and their symmetries
DISTILL_BATCHES = 3  # tdrm.train.distill: epoch e's order of trace batches, keys (e,)
RL_ORDER = 4  # tdrm.rl.train: epoch e's order of training puzzles, keys (e,)
ARC_SPLIT = 5  # tdrm.tasks.arc.dataset: the shuffle of tasks into train / dev / test
ARC_AUGMENT = 6  # tdrm.tasks.arc.dataset: task i's augmentations, keys (i,)
ARC_TRANSLATE = 7  # tdrm.tasks.arc.dataset: the training rows' canvas offsets
ARC_TEACHER = 8  # tdrm.tasks.arc.teacher_data: the teacher's order of ARC training rows
ARC_TRACES = 9  # tdrm.tasks.arc.traces: which training rows become the val traces

VALIDATION_SAMPLING = 1  # torch generator seed offset of in-training validation sampling (seed + 1)
RL_RANK_SEED = 1_000_003  # tdrm.rl.train: data-parallel rank r's rollout generator is seeded seed + r x this


def stream(seed: int, stream_id: int, *keys: int) -> np.random.Generator:
    """The numpy generator of stream `stream_id` (one of the ids above) for `seed` and `keys`."""
    return np.random.default_rng([seed, stream_id, *keys])
