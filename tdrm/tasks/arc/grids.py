"""ARC grids as tokens, and their augmentations with exact inverses (METHOD.md section 6).

Encoding (the reference's): a 30 x 30 canvas, PAD 0, EOS 1 on the row below the grid and on the
column right of it (where they fall inside the canvas), colour c -> token c + 2 (vocab 12, 900
tokens). Decoding crops the largest top-left rectangle of colour tokens, which is the grid for
every canvas `encode` writes at the origin.

Augmentations: one of the 8 dihedral transforms (index d: rotate d times by 90 degrees for d < 4,
then transpose-based reflections; inverse table [0, 3, 2, 1, 4, 5, 6, 7]) and a permutation of the
colours 1-9 (0, the background, fixed; inverted by argsort), applied to every grid of a task; a
translation (row, column offset) of demonstration pairs only. An augmentation is named by a short
string (`aug_id`) from which it is recovered exactly (`parse_aug`).

A smaller canvas (`size`, e.g. 10 for the CPU profile's tasks whose grids fit 10 x 10) encodes
the same way; every function that touches a canvas takes it (default 30).

Shapes: grids (H, W) int, H, W <= size; canvases (size, size) int tokens; P = size^2 (900).
"""
from __future__ import annotations

import numpy as np

SIZE = 30
PAD, EOS, OFFSET = 0, 1, 2
VOCAB = 12
INVERSE_DIHEDRAL = (0, 3, 2, 1, 4, 5, 6, 7)


class GridError(ValueError):
    pass


def check_grid(grid, size: int = SIZE) -> np.ndarray:
    """A grid as an (H, W) int array of colours 0-9, 1 <= H, W <= size, or GridError naming the fault."""
    g = np.asarray(grid)
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise GridError(f"an ARC grid is a non-empty 2-D array, got shape {g.shape}")
    if g.shape[0] > size or g.shape[1] > size:
        raise GridError(f"an ARC grid is at most {size} x {size}, got {g.shape[0]} x {g.shape[1]}")
    if not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() > 9:
        raise GridError("ARC grid cells are integer colours 0-9")
    return g.astype(np.int64)


def encode(grid, offset: tuple[int, int] = (0, 0), size: int = SIZE) -> np.ndarray:
    """(H, W) colours -> (size, size) tokens, the grid's top-left corner at `offset` (row, column)."""
    g = check_grid(grid, size)
    h, w = g.shape
    r0, c0 = offset
    if not (0 <= r0 <= size - h and 0 <= c0 <= size - w):
        raise GridError(f"a {h} x {w} grid does not fit the {size} x {size} canvas at offset {offset}")
    canvas = np.full((size, size), PAD, dtype=np.int64)
    canvas[r0:r0 + h, c0:c0 + w] = g + OFFSET
    if r0 + h < size:
        canvas[r0 + h, c0:c0 + w] = EOS  # the row below
    if c0 + w < size:
        canvas[r0:r0 + h, c0 + w] = EOS  # the column right
    return canvas


def decode(canvas, size: int = SIZE) -> np.ndarray:
    """(size, size) (or (size^2,)) tokens -> the largest-area rectangle of colour tokens anchored at
    the top-left corner, as colours (H, W); an empty (0, 0) array when the corner is not a colour."""
    c = np.asarray(canvas).reshape(size, size)
    colour = (c >= OFFSET) & (c < VOCAB)
    best, best_hw, width = 0, (0, 0), size
    for r in range(size):
        run = 0
        while run < width and colour[r, run]:
            run += 1
        width = run  # a rectangle's rows all reach at least its width
        if width == 0:
            break
        if (r + 1) * width > best:
            best, best_hw = (r + 1) * width, (r + 1, width)
    h, w = best_hw
    return c[:h, :w] - OFFSET


def dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    """The d-th of the 8 symmetries of the square: rot90 d times (d < 4), else transpose then rot90
    (d - 4) times."""
    if not 0 <= d < 8:
        raise GridError(f"dihedral index must be 0..7, got {d}")
    g = np.asarray(grid)
    return np.rot90(g, d) if d < 4 else np.rot90(g.T, d - 4)


def colour_map(perm: np.ndarray) -> np.ndarray:
    """A permutation of colours 1-9 (9 values) -> the full map (10,), colour 0 fixed."""
    perm = np.asarray(perm)
    if sorted(perm.tolist()) != list(range(1, 10)):
        raise GridError(f"a colour permutation is an ordering of 1..9, got {perm.tolist()}")
    return np.concatenate([[0], perm]).astype(np.int64)


def augment_grid(grid, d: int, perm) -> np.ndarray:
    """Recolour (colour c -> colour_map(perm)[c]), then the dihedral transform d."""
    return np.ascontiguousarray(dihedral(colour_map(perm)[check_grid(grid)], d))


def invert_grid(grid, d: int, perm) -> np.ndarray:
    """The exact inverse of `augment_grid(., d, perm)`."""
    back = dihedral(np.asarray(grid), INVERSE_DIHEDRAL[d])
    return np.ascontiguousarray(np.argsort(colour_map(perm))[back])


def aug_id(d: int, perm) -> str:
    """The augmentation's name: 't<d>c<9 digits>' (identity: t0c123456789)."""
    colour_map(perm)
    return f"t{d}c" + "".join(str(int(v)) for v in perm)


def parse_aug(name: str) -> tuple[int, np.ndarray]:
    """(d, perm) back from `aug_id`'s string, or GridError."""
    if len(name) != 12 or name[0] != "t" or name[2] != "c" or not name[1].isdigit() or not name[3:].isdigit():
        raise GridError(f"not an ARC augmentation id: {name!r} (expected t<d>c<9 digits>)")
    d, perm = int(name[1]), np.array([int(ch) for ch in name[3:]])
    dihedral(np.zeros((1, 1)), d)
    colour_map(perm)
    return d, perm


IDENTITY = aug_id(0, np.arange(1, 10))


def draw_augmentations(n: int, rng: np.random.Generator) -> list[str]:
    """The identity and n random (d, perm) augmentations, as ids, in draw order (duplicates kept:
    `tdrm.tasks.arc.data.augment_task` drops augmentations whose grids repeat an earlier one)."""
    out = [IDENTITY]
    for _ in range(n):
        out.append(aug_id(int(rng.integers(8)), rng.permutation(np.arange(1, 10))))
    return out


def translation(shapes: list[tuple[int, int]], rng: np.random.Generator, size: int = SIZE) -> tuple[int, int]:
    """A random offset that fits every (H, W) of `shapes` (a pair's input and output) on the canvas."""
    h = max(s[0] for s in shapes)
    w = max(s[1] for s in shapes)
    return int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))


def decode_at(canvas, offset: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """The inverse of `encode(grid, offset, size)`: shift the canvas back to the origin, then `decode`."""
    c = np.asarray(canvas).reshape(size, size)
    r0, c0 = offset
    shifted = np.full((size, size), PAD, dtype=c.dtype)
    shifted[:size - r0, :size - c0] = c[r0:, c0:]
    return decode(shifted, size)
