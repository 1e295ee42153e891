"""Sudoku data: codec, exact solver and rating, generator, symmetries, loaders, datasets."""
from .board import PuzzleError, Shape, format_board, is_solution, parse, shape_for_length, shape_for_n
from .solver import solve

__all__ = ["PuzzleError", "Shape", "format_board", "is_solution", "parse", "shape_for_length",
           "shape_for_n", "solve"]
