"""Figures: the memory-access heat maps (any number of heads), error versus length, and the callback."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from memnet.callbacks import MemoryAccessPlot, run_dir
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from memnet.plots import plot_error_vs_length, plot_memory_access
from tasks.algorithmic import AlgorithmicDataModule, AssociativeRecallTask

PNG = b"\x89PNG\r\n\x1a\n"


def weights(steps: int, heads: int, slots: int, seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(steps, heads, slots, generator=torch.Generator().manual_seed(seed)), -1)


@pytest.mark.parametrize("reads, writes", [(1, 1), (2, 3)])
def test_memory_access_figure_for_any_number_of_heads(tmp_path, reads, writes):
    path = plot_memory_access(
        tmp_path / "deep" / "figure.png",
        inputs=torch.rand(11, 5), targets=torch.rand(11, 4).round(), outputs=torch.rand(11, 4),
        read_weights=weights(11, reads, 7, 0), write_weights=weights(11, writes, 7, 1), title="t",
    )
    assert path.read_bytes()[:8] == PNG


def test_error_versus_length_figure(tmp_path):
    rows = [{"length": n, "bits_per_seq": 0.1 * n, "bit_errors_per_seq": 0.01 * n, "optimal_bits_per_seq": 0.05 * n}
            for n in (40, 10, 20)]
    path = plot_error_vs_length(tmp_path / "e.png", rows=rows, train_range=(1, 20), title="copy")
    assert path.read_bytes()[:8] == PNG
    assert plot_error_vs_length(tmp_path / "f.png", rows=rows[:1]).read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="rows"):
        plot_error_vs_length(tmp_path / "g.png", rows=[])


def kill_savefig_halfway(monkeypatch) -> None:
    """Make every ``Figure.savefig`` write half its PNG to the disk and then stop, as a kill (or a full disk) would."""
    savefig = Figure.savefig

    def killed_halfway(self, fname, **kwargs):
        buffer = io.BytesIO()
        savefig(self, buffer, **{**kwargs, "format": "png"})
        Path(fname).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed_halfway)


def test_a_figure_killed_while_saved_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """Figures were saved in place: a kill (or a full disk) while memnet evaluate or suite report drew one left half
    a PNG where the earlier figure was."""
    rows = [{"length": n, "bits_per_seq": 0.1 * n, "bit_errors_per_seq": 0.01 * n} for n in (10, 20)]
    path = plot_error_vs_length(tmp_path / "e.png", rows=rows)
    before = path.read_bytes()
    kill_savefig_halfway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        plot_error_vs_length(path, rows=rows[:1])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png"]


@pytest.mark.parametrize("draw", ["probe", "figures"])
def test_a_probe_or_chapter_figure_killed_while_saved_leaves_the_earlier_one_whole(tmp_path, monkeypatch, draw):
    """memnet.probe's gradient figures and memnet figures' PNGs (memnet.figures.style.save) were saved in place: a
    kill while one was written left half a PNG where the earlier figure was."""
    import matplotlib.pyplot as plt

    from memnet.figures.style import save
    from memnet.probe import plot_gradient_curves

    path = tmp_path / "g.png"

    def drawn(value):
        if draw == "probe":
            return plot_gradient_curves(path, {"lstm": torch.tensor([1.0, value, 0.1])})
        fig, ax = plt.subplots()
        ax.plot([1.0, value])
        return save(fig, path)

    before = drawn(0.5).read_bytes()
    kill_savefig_halfway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        drawn(0.25)
    monkeypatch.undo()
    plt.close("all")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_callback_draws_every_k_validation_epochs(tmp_path):
    task = AssociativeRecallTask(width=3, item_length=2, min_length=2, max_length=3)
    dm = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=2, val_lengths=[3], val_size=3)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
              memory_size=7, word_size=5, num_reads=2, num_writes=2)
    callback = MemoryAccessPlot(every_n_epochs=2)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(SequenceModule(net), datamodule=dm)
    drawn = sorted(p.name for p in (run_dir(trainer) / "memory_access").glob("*.png"))
    assert drawn == ["epoch_0000_step_00000002.png", "epoch_0002_step_00000006.png"]
    assert callback.last_path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("schedule", [{"max_epochs": 1, "val_check_interval": 0.5},  # two validations in an epoch
                                      {"max_steps": 4, "val_check_interval": 2}])  # by steps, in one long epoch
def test_callback_keeps_one_figure_per_validation_of_one_epoch(tmp_path, schedule):
    task = AssociativeRecallTask(width=3, item_length=2, min_length=2, max_length=3)
    dm = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=2 if "max_epochs" in schedule else 100,
                               val_lengths=[3], val_size=3)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
              memory_size=7, word_size=5, num_reads=1, num_writes=1)
    trainer = pl.Trainer(**schedule, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[MemoryAccessPlot()])
    trainer.fit(SequenceModule(net), datamodule=dm)
    drawn = sorted(p.name for p in (run_dir(trainer) / "memory_access").glob("*.png"))
    steps = (1, 2) if "max_epochs" in schedule else (2, 4)
    assert drawn == [f"epoch_0000_step_{step:08d}.png" for step in steps]  # each named epoch_0000.png, overwritten


def test_callback_keeps_the_figures_of_two_validations_inside_one_accumulation_window(tmp_path):
    # accumulating 4 batches, validating every 2: the validations after batches 4 and 6 were both step 1, and the
    # second figure overwrote the first (3 files for 4 validations)
    task = AssociativeRecallTask(width=3, item_length=2, min_length=2, max_length=3)
    dm = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=8, val_lengths=[3], val_size=3)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
              memory_size=7, word_size=5, num_reads=1, num_writes=1)
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=4, val_check_interval=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[MemoryAccessPlot()])
    trainer.fit(SequenceModule(net), datamodule=dm)
    drawn = sorted(p.name for p in (run_dir(trainer) / "memory_access").glob("*.png"))
    assert drawn == ["epoch_0000_step_00000000_batch_00000002.png", "epoch_0000_step_00000001.png",
                     "epoch_0000_step_00000001_batch_00000006.png", "epoch_0000_step_00000002.png"]  # in order


def test_callback_counts_validation_epochs_when_not_every_epoch_validates(tmp_path):
    task = AssociativeRecallTask(width=3, item_length=2, min_length=2, max_length=3)
    dm = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=1, val_lengths=[3], val_size=3)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
              memory_size=7, word_size=5, num_reads=1, num_writes=1)
    trainer = pl.Trainer(max_epochs=6, check_val_every_n_epoch=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[MemoryAccessPlot(every_n_epochs=2)])
    trainer.fit(SequenceModule(net), datamodule=dm)
    drawn = sorted(p.name for p in (run_dir(trainer) / "memory_access").glob("*.png"))
    assert drawn == ["epoch_0001_step_00000002.png", "epoch_0005_step_00000006.png"]  # validations after epochs 1, 3, 5: the first and third


@pytest.mark.parametrize("k", [0, 1.5, True, "2"])  # 1.5 drew at validations 0, 3, 6, ... (a count % 1.5 == 0)
def test_callback_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"every_n_epochs must be a positive integer, got {k!r}"):
        MemoryAccessPlot(every_n_epochs=k)


def _suite_figures(report, tmp_path, monkeypatch):
    """The axes ``plot_suite_report`` drew, by file name (figures kept open to be read)."""
    import matplotlib.pyplot as plt

    from memnet import plots

    monkeypatch.setattr(plots.plt, "close", lambda fig=None: None)
    before = set(plt.get_fignums())
    written = plots.plot_suite_report(report, tmp_path)
    figures = [plt.figure(n) for n in plt.get_fignums() if n not in before]
    axes = {path.name: figure.axes[0] for path, figure in zip(written, figures)}
    for figure in figures:
        plt.close(figure)
    return axes


def test_a_babi_panel_of_the_validation_split_says_so(tmp_path, monkeypatch):
    from memnet.metrics import BABI_TASK_KEYS

    stat = {"mean": 3.0, "std": 0.0, "n": 1}
    model = {"experiment": "memn2n-1k", "runs": 1, "per_task": {t: stat for t in BABI_TASK_KEYS}}
    references = [{"label": "MemN2N paper", "per_task": {t: 4.0 for t in BABI_TASK_KEYS}}]
    on_valid = _suite_figures({"lengths": [], "babi": {"models": [dict(model, split="valid")], "references": references}},
                              tmp_path, monkeypatch)["babi.png"]
    assert on_valid.get_ylabel() == "error % (valid split)"
    assert "memn2n-1k (valid split)" in [t.get_text() for t in on_valid.get_legend().get_texts()]
    on_test = _suite_figures({"lengths": [], "babi": {"models": [dict(model, split="test")], "references": references}},
                             tmp_path, monkeypatch)["babi.png"]
    assert on_test.get_ylabel() == "test error %"
    assert "memn2n-1k" in [t.get_text() for t in on_test.get_legend().get_texts()]


def test_lengths_measured_only_in_training_validation_are_marked(tmp_path, monkeypatch):
    stat = {"mean": 0.5, "std": 0.1, "n": 3}
    row = {"experiment": "ntm-copy", "task": "copy", "training_range": [1, 20], "validation_only": ["20"],
           "bits_per_seq": {"20": stat, "40": dict(stat, mean=3.0), "80": dict(stat, mean=9.0)}}
    ax = _suite_figures({"lengths": [row], "babi": None}, tmp_path, monkeypatch)["lengths.png"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["ntm-copy", "ntm-copy (training's validation)"]
    (hollow,) = [line for line in ax.get_lines() if line.get_label() == "ntm-copy (training's validation)"]
    assert list(hollow.get_xdata()) == [20] and hollow.get_markerfacecolor() == "white"


def test_a_sequence_shorter_than_its_batch_is_drawn_without_the_padding(tmp_path, monkeypatch):
    """Repeat copy pads a sequence of fewer repeats to the batch's longest: the figure was 16 steps of which the
    first sequence's own were 6 (its end marker at step 5), the rest padding drawn as data; now 6 steps, as
    the sequence alone draws them."""
    from memnet import callbacks
    from tasks.algorithmic import RepeatCopyTask

    task = RepeatCopyTask(width=3, min_length=1, max_length=3, min_repeats=1, max_repeats=6)
    bits = torch.randint(0, 2, (2, 2, 3), generator=torch.Generator().manual_seed(0)).float()
    batch = task.encode(bits, torch.tensor([1, 6]))  # T = 2 + 2 + 2·6 = 16; the first's own: 2 + 2 + 2·1 = 6
    alone = task.encode(bits[:1], torch.tensor([1]))
    torch.manual_seed(0)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=4),
              memory_size=7, word_size=5)
    drawn = []
    monkeypatch.setattr(callbacks, "plot_memory_access", lambda path, **arrays: drawn.append(arrays) or path)
    callbacks.draw_memory_access(SequenceModule(net), batch, tmp_path / "padded.png")
    callbacks.draw_memory_access(SequenceModule(net), alone, tmp_path / "alone.png")
    padded, own = drawn
    assert padded["inputs"].shape[0] == padded["read_weights"].shape[0] == 6  # was 16
    for name in own:
        if isinstance(own[name], torch.Tensor):
            torch.testing.assert_close(padded[name], own[name])
    # and so does memnet figures' drawing of a network
    from memnet.figures import access

    monkeypatch.setattr(access, "plot_memory_access", lambda path, **arrays: drawn.append(arrays) or path)
    access.draw_memory_access(tmp_path / "net.png", net, batch)
    assert drawn[-1]["targets"].shape[0] == drawn[-1]["write_weights"].shape[0] == 6
    # a batch of sequences of one length (copy: every step scored to the end) is drawn whole
    from memnet.plots import first_sequence_steps

    assert first_sequence_steps({"inputs": torch.zeros(2, 5, 1), "mask": torch.tensor([[0, 0, 1, 1, 0]] * 2)}) == 5
    assert first_sequence_steps({"inputs": torch.zeros(2, 5, 1)}) == 5


def _memory_access_axes(monkeypatch, **arrays):
    """The axes ``plot_memory_access`` drew (its figure kept open to be read): input, target, output, heads."""
    import matplotlib.pyplot as plt

    from memnet import plots

    monkeypatch.setattr(plots.plt, "close", lambda fig=None: None)
    before = set(plt.get_fignums())
    plots.plot_memory_access(arrays.pop("path"), **arrays)
    (number,) = set(plt.get_fignums()) - before
    figure = plt.figure(number)
    axes = list(figure.axes)
    plt.close(figure)
    return axes


def test_memory_access_of_a_head_that_visits_every_slot_is_drawn_from_slot_0(tmp_path, monkeypatch):
    """With every slot touched the window was rotated by the two margin slots: a head sweeping slots 0 … 9 was
    drawn from row 2 (rows labelled 8, 9, 0, …, 7), its sweep broken at the top; a touched run with a gap of one
    slot (slot 5 of 10 untouched) was drawn from slot 4, its slot 4 at the top cut off from slot 3 at the bottom."""
    from memnet.plots import touched_window

    n = 10
    assert touched_window(torch.ones(n, dtype=torch.bool)) == (0, n)  # was (8, 10)
    assert touched_window(torch.arange(n) != 5) == (6, n)  # slots 6 … 4 in one piece, 5 at the bottom; was (4, 10)
    assert touched_window(torch.arange(16) < 14) == (15, 16)  # slots 14, 15 untouched: one a side
    steps = torch.arange(n)
    read_weights = torch.nn.functional.one_hot(steps, n).float()[:, None]  # (T, 1, N): step t reads slot t
    write_weights = torch.nn.functional.one_hot((steps + 3) % n, n).float()[:, None]  # step t writes slot t + 3
    axes = _memory_access_axes(monkeypatch, path=tmp_path / "a.png", inputs=torch.rand(n, 3), targets=torch.rand(n, 2),
                               outputs=torch.rand(n, 2), read_weights=read_weights, write_weights=write_weights)
    for ax, weights in zip(axes[3:], (write_weights, read_weights)):
        image = torch.as_tensor(ax.images[0].get_array())  # (rows, T)
        labels = {int(tick): int(label.get_text()) for tick, label in zip(ax.get_yticks(), ax.get_yticklabels())}
        assert labels == {row: row for row in range(n)}  # was 8, 9, 0, …, 7
        for t in range(n):  # the slot a step's weighting peaks at is drawn in the row labelled with it
            assert labels[int(image[:, t].argmax())] == int(weights[t, 0].argmax())


def test_memory_access_input_panel_shows_values_outside_0_1(tmp_path, monkeypatch):
    """The input panel was drawn on a fixed 0–1 scale: repeat copy's count channel, −1.22 for 1 of 1–3 repeats,
    was drawn as a 0 (and a count above 1 as a 1); now the scale covers the values, symmetric about 0 when one is
    negative, and bits are drawn on 0–1 in grey as before."""
    from tasks.algorithmic import RepeatCopyTask

    task = RepeatCopyTask(width=3, min_length=1, max_length=3, min_repeats=1, max_repeats=3)
    example = task.encode(torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]), torch.tensor([1]))
    count = float(example["inputs"][0, 2, -1])
    assert count == pytest.approx(-1.2247, abs=1e-4)
    steps = example["inputs"].shape[1]
    arrays = {"targets": example["targets"][0], "outputs": torch.rand(steps, task.output_size),
              "read_weights": weights(steps, 1, 7, 0), "write_weights": weights(steps, 1, 7, 1)}
    inputs, target = _memory_access_axes(monkeypatch, path=tmp_path / "r.png", inputs=example["inputs"][0], **arrays)[:2]
    low, high = inputs.images[0].get_clim()
    assert (low, high) == pytest.approx((count, -count))  # was (0, 1): the count drawn as white, as a 0
    assert inputs.images[0].get_cmap().name == "RdBu_r"
    assert float(inputs.images[0].get_array()[-1, 2]) == pytest.approx(count)  # the count channel at the count step
    assert target.images[0].get_clim() == (0, 1) and target.images[0].get_cmap().name == "gray_r"  # bits as before
    large = _memory_access_axes(monkeypatch, path=tmp_path / "l.png", inputs=example["inputs"][0].abs() * 2, **arrays)
    assert large[0].images[0].get_clim() == pytest.approx((0, 2 * -count))  # was (0, 1): everything above 1 alike
