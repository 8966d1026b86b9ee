"""DDP splits the data: each process draws its own training sequences and reads its own share of
the fixed sets, and the logged epoch metrics are those of all processes together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from memnet.protocols import split_batches
from memnet.utils import MemnetError
from tasks.algorithmic import AlgorithmicDataModule, CopyTask, train_stream_seed
from tasks.babi import BabiDataModule
from tasks.sequences import SeriesDataModule

ROOT = Path(__file__).resolve().parents[1]


def _copy_module(rank: int | None, world_size: int = 2, seed: int = 5) -> AlgorithmicDataModule:
    dm = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=6), batch_size=3, batches_per_epoch=4,
                               val_size=12, seed=seed)
    if rank is not None:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    return dm


def _epoch(dm: AlgorithmicDataModule) -> list[torch.Tensor]:
    return [batch["inputs"] for batch in dm.train_dataloader()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def test_each_rank_draws_its_own_training_batches_reproducibly():
    rank0, rank1 = _copy_module(0), _copy_module(1)
    first0, first1 = _epoch(rank0), _epoch(rank1)
    assert not any(x.shape == y.shape and torch.equal(x, y) for x, y in zip(first0, first1)), \
        "two DDP ranks drew the same batch"
    assert _same(first1, _epoch(_copy_module(1))), "the same rank and seed must give the same batches"
    assert _same(first0, _epoch(_copy_module(None))), "rank 0 draws what a single-process run draws"
    assert not _same(_epoch(rank1), first1), "the next epoch draws new batches"
    assert len({train_stream_seed(5, epoch, rank) for epoch in range(4) for rank in range(4)}) == 16


def test_fixed_sets_are_shared_out_between_ranks():
    shares = []
    for rank in (0, 1):
        loader = _copy_module(rank).val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)
        shares.append(list(loader.sampler))
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == [0, 1, 2, 3]
    assert _copy_module(None).val_dataloader().sampler.__class__.__name__ == "SequentialSampler"

    series = [SeriesDataModule(length=12, washout=2, batch_size=2, train_size=8, val_size=4, test_size=4)
              for _ in range(2)]
    for rank, dm in enumerate(series):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
    train = [[batch["inputs"] for batch in dm.train_dataloader()] for dm in series]
    assert len(train[0]) == len(train[1]) == 2
    assert not any(torch.equal(x, y) for x in train[0] for y in train[1])


def test_babi_batches_are_shared_out_between_ranks():
    indices = []
    for rank in (0, 1):
        dm = BabiDataModule(tasks=[1], batch_size=2, seed=3)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm._splits = {"train": list(range(10)), "validation": list(range(5))}  # the loaders only index them
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, DistributedSampler) and sampler.shuffle
        indices.append(list(sampler))
    assert sorted(indices[0] + indices[1]) == list(range(10))


def test_no_two_seeds_share_an_epochs_order_under_ddp():
    """torch's DistributedSampler shuffles epoch e by seed + e: seed 3's epoch 1 was seed 4's epoch 0."""
    orders = []
    for seed in range(4):
        dm = BabiDataModule(tasks=[1], batch_size=2, seed=seed)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=2)
        dm._splits = {"train": list(range(40)), "validation": list(range(5))}
        sampler = dm.train_dataloader().sampler
        for epoch in range(4):
            sampler.set_epoch(epoch)
            orders.append(tuple(sampler))
        assert sampler.seed == seed and sampler.epoch == 3  # left as Lightning set them
    assert len(set(orders)) == len(orders)


def _sequences(loader) -> Counter:
    """Every sequence a loader yields, as (length, its inputs and targets), counted."""
    return Counter((batch["length"], tuple(batch["inputs"][i].flatten().tolist()),
                    tuple(batch["targets"][i].flatten().tolist()))
                   for batch in loader for i in range(batch["inputs"].shape[0]))


def _shares(make, split: str, world_size: int) -> list[DataLoader]:
    """The ``split`` loaders of the data modules ``make(rank, world_size)`` on each of ``world_size`` ranks."""
    loaders = []
    for rank in range(world_size):
        loader = getattr(make(rank, world_size), f"{split}_dataloader")()
        assert isinstance(loader.sampler, DistributedSampler)  # else Lightning puts its own, repeating, in its place
        loaders.append(loader)
    return loaders


@pytest.mark.parametrize(("val_lengths", "size", "world_size"), [
    ([2, 5, 6], 3, 2),  # three batches over two ranks
    ([2, 5], 4, 3),  # batches of 3, 1, 3, 1 over three ranks
    ([4], 3, 2),  # one batch over two ranks: a rank without a batch would skip validation and hang the other
])
def test_every_sequence_of_a_fixed_set_is_scored_once_over_the_ranks(val_lengths, size, world_size):
    """DistributedSampler repeated a set's first batches where their number did not divide by the processes: the
    logged validation and test scores were not those of the set."""
    def module(rank=None, world=world_size):
        dm = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=6), batch_size=3, val_lengths=val_lengths,
                                   val_size=size, test_size=size, seed=5)
        if rank is not None:
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        return dm

    for split in ("val", "test"):
        whole = _sequences(getattr(module(), f"{split}_dataloader")())
        shares = [_sequences(loader) for loader in _shares(module, split, world_size)]
        assert all(shares), "every rank needs a batch: one without would skip validation and hang the others"
        assert sum(shares, Counter()) == whole

    def series(rank, world):
        dm = SeriesDataModule(length=12, washout=2, batch_size=2, train_size=8, val_size=6, test_size=1)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        return dm

    whole = _sequences(SeriesDataModule(length=12, washout=2, batch_size=2, train_size=8, val_size=6).val_dataloader())
    assert sum((_sequences(loader) for loader in _shares(series, "val", 2)), Counter()) == whole
    for rank in (0, 1):  # one test sequence for two processes: refused on both, not a hang
        with pytest.raises(MemnetError, match="1 sequence.* 2 processes"):
            series(rank, 2).test_dataloader()


def test_a_set_of_fewer_batches_than_processes_has_its_largest_cut_in_two():
    batches = [{"inputs": torch.arange(n, dtype=torch.float32).view(n, 1, 1) + 10 * n, "mask": torch.ones(n, 1),
                "length": n} for n in (5, 2)]
    split = split_batches(batches, 4)
    assert [len(batch["mask"]) for batch in split] == [2, 1, 2, 2] and [batch["length"] for batch in split] == [5, 5, 5, 2]
    assert torch.equal(torch.cat([batch["inputs"] for batch in split]), torch.cat([b["inputs"] for b in batches]))
    assert [id(batch) for batch in split_batches(batches, 2)] == [id(batch) for batch in batches]  # enough already
    assert len(split_batches(batches[1:], 3)) == 2  # two sequences: two batches, the most there can be


def test_every_babi_question_of_a_fixed_split_is_answered_once_over_the_ranks():
    def module(rank, world=2, questions=5):
        dm = BabiDataModule(tasks=[1], batch_size=2, seed=3)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        dm._splits = {"validation": list(range(questions)), "test": list(range(questions))}  # the loaders only index them
        return dm

    for split in ("val", "test"):
        loaders = _shares(module, split, 2)
        indices = [list(loader.sampler) for loader in loaders]
        assert sorted(indices[0] + indices[1]) == list(range(5)) and all(len(loader) for loader in loaders)
    for rank in (0, 1):
        with pytest.raises(MemnetError, match="1 question.* 2 processes"):
            module(rank, questions=1).val_dataloader()


RECORDER = '''
import json, os
import pytorch_lightning as pl
import torch
from memnet.lightning import sequence_metrics

class Recorder(pl.Callback):
    """Writes what this process trained on and its own validation losses to rank<r>.json."""
    def __init__(self):
        self.train, self.val = [], []
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.append(batch["inputs"].flatten().tolist())
    def on_validation_epoch_start(self, trainer, pl_module):
        self.val = []
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with torch.no_grad():
            metrics = sequence_metrics(pl_module(batch["inputs"]), batch["targets"], batch["mask"])
        n, scored_bits = batch["inputs"].shape[0], float(batch["mask"].sum()) * batch["targets"].shape[-1]
        self.val.append([float(metrics["loss"]), n, scored_bits, int(batch["length"]), float(metrics["bits_per_seq"]) * n])
    def on_fit_end(self, trainer, pl_module):
        record = {"train": self.train, "val": self.val, "world_size": trainer.world_size,
                  "logged": float(trainer.callback_metrics["val/loss"]),
                  "by_length": {k: float(v) for k, v in trainer.callback_metrics.items() if "/len_" in k}}
        with open(f"rank{trainer.global_rank}.json", "w") as handle:
            json.dump(record, handle)
'''


@pytest.mark.slow
def test_two_cpu_processes_train_on_different_batches_and_log_global_metrics(tmp_path):
    (tmp_path / "ddp_recorder.py").write_text(textwrap.dedent(RECORDER))
    (tmp_path / "run_memnet.py").write_text("from memnet.cli import main\nmain()\n")
    command = [
        sys.executable, "run_memnet.py", "fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.logger=false",
        "--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks+=ddp_recorder.Recorder",
        "--model.init_args.net.init_args.memory_size=8", "--model.init_args.net.init_args.controller.init_args.hidden_size=8",
        "--data.init_args.batches_per_epoch=2", "--data.init_args.batch_size=2", "--data.init_args.val_size=2",
        "--data.init_args.val_lengths=[1,2,3,4]",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline"}
    result = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["train"] and all(a != b for a, b in zip(ranks[0]["train"], ranks[1]["train"]))
    # 2 validation sequences of each length 1-4 in batches of 2: two batches, two lengths, each process
    assert len(ranks[0]["val"]) == len(ranks[1]["val"]) == 2 and ranks[0]["val"] != ranks[1]["val"]
    batches = ranks[0]["val"] + ranks[1]["val"]
    global_loss = sum(loss * bits for loss, _, bits, _, _ in batches) / sum(bits for _, _, bits, _, _ in batches)
    for rank in ranks:  # the loss per scored bit of both processes' batches
        assert rank["logged"] == pytest.approx(global_loss, rel=1e-5)
    assert ranks[0]["logged"] != pytest.approx(ranks[0]["val"][0][0], rel=1e-5)  # not rank 0's own
    # every length on every process, with the bits of that length's sequences wherever they were validated
    # (a per-length self.log on the processes that saw the length paired the all-reduces wrongly)
    lengths = sorted({length for *_, length, _ in batches})
    assert len(lengths) > 2 and {length for *_, length, _ in ranks[0]["val"]} != set(lengths)
    for length in lengths:
        own = [(n, bits) for _, n, _, n_length, bits in batches if n_length == length]
        expected = sum(bits for _, bits in own) / sum(n for n, _ in own)
        for rank in ranks:
            assert rank["by_length"][f"val/len_{length}/bits_per_seq"] == pytest.approx(expected, rel=1e-5)
    assert ranks[0]["by_length"].keys() == ranks[1]["by_length"].keys()


RIDGE = '''
import sys
from functools import partial
import pytorch_lightning as pl
import torch
from memnet.controllers import EchoStateController
from memnet.lightning import RidgeReadoutModule
from memnet.models.recurrent import RecurrentModel
from tasks.sequences import SeriesDataModule

class Keep(pl.Callback):
    def on_train_end(self, trainer, module):
        torch.save(module.net.output.state_dict(), f"readout_{trainer.world_size}_{trainer.global_rank}.pt")

if __name__ == "__main__":
    devices = int(sys.argv[1])
    torch.manual_seed(0)
    net = RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=20, spectral_radius=0.9, seed=5))
    data = SeriesDataModule(series="narma10", length=120, washout=20, batch_size=2, train_size=8, val_size=4,
                            test_size=4, seed=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[Keep()])
    trainer.fit(RidgeReadoutModule(net, ridge=1e-6), datamodule=data)
'''


def _run_on_one_and_two_processes(folder: Path, name: str, source: str) -> None:
    """Write the script ``source`` as ``folder/name`` and run it with 1, then 2 processes (its argument)."""
    (folder / name).write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for devices in (1, 2):
        result = subprocess.run([sys.executable, name, str(devices)], check=False, cwd=folder, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_fit_one_ridge_readout_from_the_whole_training_set(tmp_path):
    """Each process sees half the training batches; both install the read-out one process fits from all of them."""
    _run_on_one_and_two_processes(tmp_path, "ridge_ddp.py", RIDGE)
    alone = torch.load(tmp_path / "readout_1_0.pt")
    for rank in (0, 1):
        shared = torch.load(tmp_path / f"readout_2_{rank}.pt")
        torch.testing.assert_close(shared["weight"], alone["weight"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(shared["bias"], alone["bias"], atol=1e-5, rtol=1e-4)


CURRICULUM = '''
import json, sys
from functools import partial
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from memnet.controllers import LSTMController
from memnet.curriculum import LengthCurriculum
from memnet.lightning import SequenceModule
from memnet.models.recurrent import RecurrentModel
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

class Uneven(SequenceModule):
    """Logs 2 on rank 0 and 0 on rank 1 under train/uneven, without sync_dist: Lightning's epoch value is each
    process's own."""
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/uneven", 2.0 * (1 - self.global_rank), on_step=True, on_epoch=True, batch_size=1)
        return loss

class Keep(pl.Callback):
    def on_train_end(self, trainer, module):
        [curriculum] = [c for c in trainer.callbacks if isinstance(c, LengthCurriculum)]
        with open(f"curriculum{trainer.global_rank}.json", "w") as handle:
            json.dump(curriculum.history, handle)

if __name__ == "__main__":
    torch.manual_seed(0)
    net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=4))
    data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=8), batch_size=2, batches_per_epoch=2,
                                 val_size=4, seed=0)
    curriculum = LengthCurriculum("growing", start_length=2, monitor="train/uneven", threshold=1.5)
    checkpoint = ModelCheckpoint(dirpath="checkpoints", save_last=True, save_on_train_epoch_end=False)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=2, callbacks=[curriculum, checkpoint, Keep()])
    trainer.fit(Uneven(net), datamodule=data)
'''


@pytest.mark.slow
def test_two_processes_step_the_curriculum_up_together_on_the_value_over_both(tmp_path):
    """Rank 0 alone (2 > 1.5) would hold the level and rank 1 alone (0 < 1.5) step up, desynchronising the data;
    both decide on the mean over both (1 < 1.5), and the checkpoint keeps the sums over both for a resume."""
    (tmp_path / "curriculum_ddp.py").write_text(textwrap.dedent(CURRICULUM))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "curriculum_ddp.py"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "self.log('curriculum/" not in result.stderr  # Lightning's warning on an epoch value logged unsynced
    for rank in (0, 1):
        assert json.loads((tmp_path / f"curriculum{rank}.json").read_text()) == [[0, 2], [1, 3], [2, 4]]
    # written at epoch 1's validation, before its end: both processes' 2 batches, weighted 1 each
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    [saved] = [state for key, state in states.items() if key.startswith("LengthCurriculum{")]  # keyed by its settings
    assert (saved["train_sum"], saved["train_weight"]) == (4.0, 4.0)


WINDOW = '''
import sys
from functools import partial
import pytorch_lightning as pl
import torch
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.recurrent import RecurrentModel
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

class SaveInsideAWindow(pl.Callback):  # at epoch 1's validation after its third batch, accumulating 2
    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop._should_accumulate():
            trainer.save_checkpoint("window.ckpt")

if __name__ == "__main__":
    resume = sys.argv[1] == "resume"
    torch.manual_seed(0)
    net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=4))
    data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=4), batch_size=2, batches_per_epoch=6,
                                 val_size=4, seed=0)
    module = SequenceModule(net)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accumulate_grad_batches=2, val_check_interval=3, limit_val_batches=1,
                         callbacks=[] if resume else [SaveInsideAWindow()])
    trainer.fit(module, datamodule=data, ckpt_path="window.ckpt" if resume else None)
    if trainer.global_rank == 0:
        torch.save(module.state_dict(), sys.argv[1] + ".pt")
'''


@pytest.mark.slow
def test_two_processes_resume_a_checkpoint_written_inside_an_accumulation_window_to_the_unbroken_weights(tmp_path):
    """Inside a window of accumulate_grad_batches each process holds its own gradients, not yet reduced; the
    checkpoint keeps every process's (rank 0's file), and each resumes its own: the unbroken run's weights (without
    them the resumed step took the batch after the resume alone, 1e-3 away)."""
    (tmp_path / "window_ddp.py").write_text(textwrap.dedent(WINDOW))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for stage in ("whole", "resume"):
        result = subprocess.run([sys.executable, "window_ddp.py", stage], check=False, cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    grads = torch.load(tmp_path / "window.ckpt", weights_only=False)["memnet_accumulated_grads"]
    assert len(grads) == 2 and not torch.equal(*(g["net.output.weight"] for g in grads))  # each process's own
    whole, resumed = (torch.load(tmp_path / f"{stage}.pt") for stage in ("whole", "resume"))
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name


SCORES = '''
import json, sys
from functools import partial
import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from memnet.controllers import EchoStateController, GRUController, LSTMController
from memnet.lightning import ConditionalSequenceModule, QAModule, RegressionModule, SequenceModule
from memnet.models.recurrent import RecurrentModel
from tasks.algorithmic import AlgorithmicDataModule, CopyTask, DynamicNGramsTask
from tasks.babi import BabiDataModule
from memnet.protocols import split_batches
from memnet.utils import MemnetError
from tasks.sequences import MarkovBitsTask, SeriesDataModule

class Questions(BabiDataModule):
    """Seven made-up questions in validation and test (nothing to download), vocabulary 6, answers 4."""
    def prepare_data(self):
        pass
    def setup(self, stage=None):
        g = np.random.default_rng(0)
        questions = [{"story": g.integers(1, 6, (int(g.integers(1, 4)), 3)), "query": g.integers(1, 6, 2),
                      "answer": int(g.integers(0, 4)), "task": int(g.integers(1, 3))} for _ in range(7)]
        self._splits = {"train": questions, "validation": questions, "test": questions}

class Guess(nn.Module):
    """Answer logits from the words' embeddings, the padding's zero: the same whatever a batch is padded to."""
    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(6, 4, padding_idx=0)
    def forward(self, story, query):
        return self.words(query).sum(1) + 0.1 * self.words(story).sum((1, 2))

def scores(trainer, stage, module, data):
    return {key: float(value) for key, value in getattr(trainer, stage)(module, datamodule=data, verbose=False)[0].items()}

if __name__ == "__main__":
    devices = int(sys.argv[1])
    def trainer(**kwargs):
        return pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    def net(task, controller=partial(LSTMController, hidden_size=4), **kwargs):
        torch.manual_seed(0)
        return RecurrentModel(task.input_size, task.output_size, controller=controller, **kwargs)
    results = {}
    # three validation batches (3 sequences of lengths 2, 5, 6), test batches of 3 and 2 sequences
    markov = MarkovBitsTask(width=2, min_length=2, max_length=6)
    data = AlgorithmicDataModule(markov, batch_size=3, val_lengths=[2, 5, 6], val_size=3, test_lengths=[4],
                                 test_size=5, seed=1)
    module = ConditionalSequenceModule(net(markov, partial(GRUController, hidden_size=4), conditional=True))
    results["markov/validate"] = scores(trainer(), "validate", module, data)
    results["markov/test"] = scores(trainer(), "test", module, data)
    # one validation batch: a rank without one would not validate
    ngrams = DynamicNGramsTask(order=3, min_length=8, max_length=8)
    data = AlgorithmicDataModule(ngrams, batch_size=3, val_size=3, seed=2)
    results["ngrams/validate"] = scores(trainer(), "validate", SequenceModule(net(ngrams)), data)
    # three validation batches of series; a reservoir's buffers are synchronised by DDP in fit's validation
    series = SeriesDataModule(length=30, washout=5, batch_size=2, train_size=4, val_size=5, test_size=3, seed=0)
    torch.manual_seed(0)
    reservoir = RecurrentModel(1, 1, controller=partial(EchoStateController, reservoir_size=10, seed=5))
    module = RegressionModule(reservoir, optimizer=partial(torch.optim.SGD, lr=0.0))
    results["series/validate"] = scores(trainer(), "validate", module, series)
    fit = trainer(max_epochs=1, num_sanity_val_steps=0)
    fit.fit(module, datamodule=series)
    results["series/fit"] = {key: float(value) for key, value in fit.callback_metrics.items() if key.startswith("val/")}
    # seven questions in batches of 2: two batches on one rank, one on the other
    qa = QAModule(Guess())
    torch.manual_seed(0)
    qa.net.words.reset_parameters()
    results["babi/validate"] = scores(trainer(), "validate", qa, Questions(tasks=[1, 2], batch_size=2))
    results["babi/test"] = scores(trainer(), "test", qa, Questions(tasks=[1, 2], batch_size=2))
    # one validation sequence: too few for two processes, refused on both rather than a hang
    try:
        scores(trainer(), "validate", SequenceModule(net(ngrams)), AlgorithmicDataModule(ngrams, val_size=1))
    except MemnetError as error:
        results["refused"] = str(error)
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    with open(f"scores_{devices}_{rank}.json", "w") as handle:
        json.dump(results, handle)
'''


@pytest.mark.slow
def test_two_processes_log_the_validation_and_test_scores_of_one(tmp_path):
    """Sets whose batches (or questions) do not divide by two: every score logged by two processes is the one
    process's, in validate, test and fit's validation, for sequence, regression and question-answering modules."""
    _run_on_one_and_two_processes(tmp_path, "scores_ddp.py", SCORES)
    alone = json.loads((tmp_path / "scores_1_0.json").read_text())
    assert {"val/free_bits_per_seq", "val/len_6/bits_per_seq"} <= alone["markov/validate"].keys()
    assert {"val/excess_bits_per_seq", "val/optimal_bits_per_seq"} <= alone["ngrams/validate"].keys()
    assert {"val/loss", "val/nrmse"} <= alone["series/fit"].keys() and "test/task_2/error" in alone["babi/test"]
    assert "refused" not in alone
    for rank in (0, 1):
        shared = json.loads((tmp_path / f"scores_2_{rank}.json").read_text())
        assert "of 1 sequence cannot be shared out between 2 processes" in shared.pop("refused")
        for run, logged in alone.items():
            assert shared[run].keys() == logged.keys(), run
            for key, value in logged.items():
                assert shared[run][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (run, key)


class _FakeGather:
    """``torch.distributed`` as process ``rank`` of two sees it: ``all_gather_object`` returns ``others`` (by rank)
    with this process's own value in its place."""

    def __init__(self, monkeypatch, rank: int, others: list) -> None:
        self.rank, self.others = rank, others
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
        monkeypatch.setattr(torch.distributed, "all_gather_object", self.all_gather_object)

    def all_gather_object(self, gathered: list, value) -> None:
        gathered[:] = [value if r == self.rank else other for r, other in enumerate(self.others)]


def test_a_ddp_checkpoint_resumes_every_process_from_its_own_draws(monkeypatch):
    """Every process draws its own (a seq2seq's coin flips, one per target step of its own batches), but the
    checkpoint kept rank 0's draws alone and rank 1 resumed from them: a 2-process seq2seq run (teacher forcing
    0.5) stopped at step 2 and resumed to step 4 ended 0.0066 away from the unbroken run's weights (0.0 after)."""
    from memnet.lightning import SequenceModule
    from memnet.models.ntm import NTM

    def module(rank: int) -> SequenceModule:
        made = SequenceModule(NTM(4, 4, memory_size=7, word_size=5, memory_init="random"))
        made._trainer = SimpleNamespace(global_rank=rank, world_size=2, state=SimpleNamespace(fn="validate"))
        return made

    draws = []  # rank r's generator state after drawing r + 1 memories, and the draw that comes next
    for rank in (0, 1):
        init = module(rank).net.memory_init
        for _ in range(rank + 1):
            init(3, 7)
        draws.append((init.rng_state(), init(3, 7)))
    torch.manual_seed(11)  # rank 1's global generator differs from rank 0's too
    rank1_global = torch.get_rng_state()
    others = [{"modules": {"net.memory_init": draws[0][0]}, "global": {"cpu": torch.manual_seed(10).get_state()}},
              None]
    saving = module(1)
    saving.net.memory_init.set_rng_state(draws[1][0])
    torch.set_rng_state(rank1_global)
    checkpoint: dict = {}
    _FakeGather(monkeypatch, 1, others)
    saving.on_save_checkpoint(checkpoint)
    assert len(checkpoint["memnet_rng_by_rank"]) == 2

    for rank in (0, 1):
        resumed = module(rank)
        resumed.on_load_checkpoint(checkpoint)
        assert torch.equal(resumed.net.memory_init(3, 7), draws[rank][1]), f"rank {rank} resumed another's draws"
    assert torch.equal(resumed._resumed_global_rng["cpu"], rank1_global)
    one = module(0)
    one._trainer.world_size = 1  # resumed on one process: rank 0's draws, as before
    one.on_load_checkpoint(checkpoint)
    assert torch.equal(one.net.memory_init(3, 7), draws[0][1])


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_predict_prints_the_whole_set_in_order(monkeypatch, capsys, rank):
    """Each DDP process predicts its share (rank r the batches r, r + W, …); memnet predict printed rank 0's share
    alone (bit errors over 2 of the 3 sequences of each length) and a seq2seq's decodings came from each process
    (rank 1's among rank 0's, print_predictions of each). Now rank 0 prints those of the whole set, as one process."""
    from memnet.controllers import LSTMController
    from memnet.lightning import Seq2SeqModule, SequenceModule
    from memnet.models.recurrent import RecurrentModel
    from memnet.models.seq2seq import Seq2Seq
    from tasks.sequences import ReverseTask

    def data(task, rank=None):
        dm = AlgorithmicDataModule(task, batch_size=2, test_lengths=[2, 3, 4], test_size=3, seed=5)
        if rank is not None:
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        return dm

    def printed(make_module, task) -> tuple[str, str]:
        alone = make_module()
        alone._trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True)
        capsys.readouterr()
        run_hooks(alone, list(data(task).predict_dataloader()))
        one = capsys.readouterr().out
        shares = [list(data(task, r).predict_dataloader()) for r in (0, 1)]
        others = []
        for r in (0, 1):  # what each process hands over at the epoch's end
            module = make_module()
            module._trainer = SimpleNamespace(global_rank=r, world_size=2, is_global_zero=r == 0)
            run_hooks(module, shares[r], end=False)
            others.append((module._predicted, module._first_prediction) if isinstance(module, SequenceModule)
                          else module._unprinted)
        capsys.readouterr()
        module = make_module()
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2, is_global_zero=rank == 0)
        _FakeGather(monkeypatch, rank, others)
        run_hooks(module, shares[rank])
        monkeypatch.undo()  # torch.distributed as it is (DataLoader asks it too)
        return one, capsys.readouterr().out

    def run_hooks(module, batches, end=True):
        module.eval()
        module.on_predict_epoch_start()
        for index, batch in enumerate(batches):
            with torch.no_grad():
                module.on_predict_batch_end(module.predict_step(batch, index), batch, index)
        if end:
            module.on_predict_epoch_end()

    copy = CopyTask(width=3, min_length=1, max_length=6)

    def sequence_module():
        torch.manual_seed(0)
        return SequenceModule(RecurrentModel(copy.input_size, copy.output_size, controller=partial(LSTMController, hidden_size=4)))

    one, shared = printed(sequence_module, copy)
    assert "     3          3  " in one
    assert shared == (one if rank == 0 else "")

    reverse = ReverseTask(num_symbols=4, min_length=1, max_length=4)

    def seq2seq_module():
        torch.manual_seed(0)
        return Seq2SeqModule(Seq2Seq(reverse.input_size, reverse.output_size, embedding_size=3,
                                     encoder=partial(LSTMController, hidden_size=4),
                                     decoder=partial(LSTMController, hidden_size=4), max_decode_length=5),
                             print_predictions=5)

    one, shared = printed(seq2seq_module, reverse)
    assert len(one.strip().splitlines()) == 5
    assert shared == (one if rank == 0 else "")


def test_every_process_draws_its_own_training_noise(monkeypatch):
    """Every DDP process seeded its modules' generators with the one seed, and drew the same noise for its batch's
    sequence i: two CPU processes of an NTM with random initial memories (batches of 2) started every training
    batch from the same two memories on both (-0.410, 0.198, 0.449, …), MemN2N's random-noise time rows and a
    seq2seq's teacher-forcing coin flips were alike on every process. Rank 0 still draws what one process draws,
    and evaluation's memory is every process's."""
    from memnet.controllers import LSTMController
    from memnet.lightning import Seq2SeqModule, SequenceModule
    from memnet.memory import MemoryInit
    from memnet.models.memn2n import MemN2N
    from memnet.models.ntm import NTM
    from memnet.models.seq2seq import Seq2Seq

    def on_rank(rank: int | None, draw):
        """What ``draw()`` gives in process ``rank`` of a DDP run (None: no process group)."""
        with monkeypatch.context() as patch:
            if rank is not None:
                patch.setattr(torch.distributed, "is_initialized", lambda: True)
                patch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
            return draw()

    def memories(train: bool = True) -> torch.Tensor:
        init = MemoryInit(word_size=5, scheme="random", seed=3).train(train)
        return torch.stack([init(2, 7) for _ in range(2)])

    alone, first, second = (on_rank(rank, memories) for rank in (None, 0, 1))
    assert torch.equal(first, alone) and not torch.equal(second, first)
    assert torch.equal(on_rank(1, partial(memories, False)), on_rank(0, partial(memories, False)))

    def time_rows() -> torch.Tensor:
        net = MemN2N(9, 3, embedding_size=4, memory_size=12, random_noise=0.5, seed=0).train()
        present = torch.ones(6, 10, dtype=torch.bool)
        return torch.stack([net.time_indices(present, net._rn_generator()) for _ in range(3)])

    assert not torch.equal(on_rank(1, time_rows), on_rank(0, time_rows))

    def flips() -> torch.Tensor:
        module = Seq2SeqModule(Seq2Seq(5, 5, embedding_size=3, encoder=partial(LSTMController, hidden_size=4),
                                       decoder=partial(LSTMController, hidden_size=4)), seed=4)
        return torch.rand(32, generator=module.generator)

    assert torch.equal(on_rank(0, flips), on_rank(None, flips)) and not torch.equal(on_rank(1, flips), on_rank(0, flips))

    # a one-process checkpoint resumed on two processes: rank 0 goes on with its draws, rank 1 draws its own
    saved = SequenceModule(NTM(4, 4, memory_size=7, word_size=5, memory_init="random"))
    saved.net.memory_init(3, 7)
    checkpoint: dict = {}
    saved.on_save_checkpoint(checkpoint)

    def resumed(rank: int) -> torch.Tensor:
        module = SequenceModule(NTM(4, 4, memory_size=7, word_size=5, memory_init="random"))
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2, state=SimpleNamespace(fn="validate"))
        module.on_load_checkpoint(checkpoint)
        return module.net.memory_init(3, 7)

    assert torch.equal(on_rank(0, partial(resumed, 0)), saved.net.memory_init(3, 7))
    assert not torch.equal(on_rank(1, partial(resumed, 1)), on_rank(0, partial(resumed, 0)))


DROPOUT = '''
import json
from functools import partial
import pytorch_lightning as pl
import torch
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.recurrent import RecurrentModel
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

class Masks(SequenceModule):
    """At each training step, the network's output on one fixed input in training mode, before the step: the
    weights are every process's (DDP broadcasts rank 0's), so two processes' outputs differ where their dropout does."""
    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.outputs.append(self.net(torch.ones(1, 3, 4)).flatten().tolist())
        return super().training_step(batch, batch_idx)

if __name__ == "__main__":
    pl.seed_everything(3)
    net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=16, num_layers=2, dropout=0.5))
    module = Masks(net)
    module.outputs = []
    data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=4), batch_size=2, batches_per_epoch=2,
                                 val_size=2, seed=0)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    with open(f"dropout{trainer.global_rank}.json", "w") as handle:
        json.dump(module.outputs, handle)
'''


@pytest.mark.slow
def test_two_processes_draw_their_own_dropout_masks(tmp_path):
    """Lightning seeds torch's global generator alike in every process, and dropout draws from it: two CPU processes
    of an LSTM with dropout 0.5 between its 2 layers dropped the same units at the first step, so their outputs on
    one input, with the same weights, were equal (two processes of batch B had B masks where one of batch 2B has 2B)."""
    (tmp_path / "dropout_ddp.py").write_text(textwrap.dedent(DROPOUT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "dropout_ddp.py"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"dropout{rank}.json").read_text()) for rank in (0, 1))
    assert len(first) == len(second) == 2
    for step, (a, b) in enumerate(zip(first, second)):
        assert a != b, f"both processes drew the same dropout masks at step {step}: {a[:3]}"


def test_a_process_without_its_own_global_generator_in_the_checkpoint_draws_its_own(monkeypatch):
    """torch's global generator (dropout's) was rank 0's on every process resumed from a checkpoint of one process
    (or of another number), and a checkpoint written while every process's was alike handed it back alike: rank 1
    dropped the units rank 0 did. Rank 0 goes on from the checkpoint's state, rank r > 0 from a state of its own
    derived from it and r; a checkpoint without the state still loads."""
    from memnet.controllers import LSTMController
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel
    from memnet.training import set_global_rng_state

    def resumed_draws(checkpoint: dict, rank: int) -> torch.Tensor | None:
        """What rank ``rank`` of 2 draws from torch's global generator once resumed from ``checkpoint``."""
        module = SequenceModule(RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=4)))
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2, state=SimpleNamespace(fn="validate"))
        module.on_load_checkpoint(checkpoint)
        if module._resumed_global_rng is None:
            return None
        with torch.random.fork_rng(devices=[]):
            set_global_rng_state(module._resumed_global_rng)
            return torch.rand(8)

    saved = {"cpu": torch.Generator().manual_seed(10).get_state()}
    expected = torch.rand(8, generator=torch.Generator().manual_seed(10))
    alike = {"memnet_global_rng": saved, "memnet_rng_by_rank": [{"modules": {}, "global": saved}] * 2}
    for checkpoint in ({"memnet_global_rng": saved}, alike):  # one process's; two processes' drawn alike
        first, second = resumed_draws(checkpoint, 0), resumed_draws(checkpoint, 1)
        assert torch.equal(first, expected), "rank 0 goes on from the checkpoint's state"
        assert not torch.equal(second, first), "rank 1 resumed rank 0's global generator"
        assert torch.equal(resumed_draws(checkpoint, 1), second), "rank 1's own state is derived reproducibly"
    assert resumed_draws({}, 1) is None  # a checkpoint from before memnet kept the global generators


def test_ddp_rank_r_seeds_its_global_generator_with_the_seed_mixed_with_r(monkeypatch):
    """Rank 0 keeps the state it has (what one process draws); rank r > 0 is seeded with the run's seed
    (PL_GLOBAL_SEED, else torch.initial_seed()) mixed with r."""
    from memnet.training import split_global_rng
    from memnet.utils import mix_seed

    with torch.random.fork_rng(devices=[]):
        monkeypatch.setenv("PL_GLOBAL_SEED", "7")
        torch.manual_seed(7)
        torch.rand(3)  # drawn since the seed (the weights' initialisation)
        state = torch.get_rng_state()
        split_global_rng(0)
        assert torch.equal(torch.get_rng_state(), state)
        split_global_rng(1)
        assert torch.initial_seed() == mix_seed(7, 1)
        monkeypatch.delenv("PL_GLOBAL_SEED")
        torch.manual_seed(7)
        split_global_rng(2)  # no seed_everything: torch's initial seed, alike in every process
        assert torch.initial_seed() == mix_seed(7, 2)


PROBE = '''
import json
from functools import partial
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from memnet.probe import GradientProbe
from tasks.algorithmic import AlgorithmicDataModule, CopyTask

class Keep(pl.Callback):
    def on_validation_end(self, trainer, module):
        probed = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/")}
        with open(f"probe{trainer.global_rank}.json", "w") as handle:
            json.dump(probed, handle)

if __name__ == "__main__":
    torch.manual_seed(0)
    net = NTM(4, 3, controller=partial(LSTMController, hidden_size=4), memory_size=4, word_size=3)
    data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=3), batch_size=2, batches_per_epoch=1,
                                 val_size=4, seed=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", enable_checkpointing=False,
                         logger=CSVLogger("logs", name="", version=""), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[GradientProbe(), Keep()])
    trainer.fit(SequenceModule(net), datamodule=data)
'''


@pytest.mark.slow
def test_two_processes_log_the_gradient_probe_of_rank_0_on_both(tmp_path):
    """Rank 0 alone measured and logged probe/...: Lightning warned, for each key, to use sync_dist ('It is
    recommended to use `self.log('probe/log10_grad_first', ..., sync_dist=True)` ...') and rank 1 had no probe/
    metric (a callback monitoring one was refused there). Rank 0 measures, both log its numbers."""
    (tmp_path / "probe_ddp.py").write_text(textwrap.dedent(PROBE))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "probe_ddp.py"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "self.log('probe/" not in result.stderr
    first, second = (json.loads((tmp_path / f"probe{rank}.json").read_text()) for rank in (0, 1))
    assert {"probe/log10_grad_first", "probe/memory/log10_grad_first", "probe/controller/log10_grad_last"} <= first.keys()
    assert second == first
    [header, *rows] = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("probe/memory/log10_grad_first")
    logged = [float(row.split(",")[column]) for row in rows if row.split(",")[column]]
    assert logged == [pytest.approx(first["probe/memory/log10_grad_first"])]
    assert len(list((tmp_path / "runs" / "debug" / "gradient_probe").glob("*.png"))) == 1  # drawn by rank 0 alone
