"""The tiny NTM copy run the command-line tests train (2 steps, 7 slots of width 5), as YAML text."""

from __future__ import annotations

import copy
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "seed_everything": 0,
    "trainer": {"max_steps": 2, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                "limit_val_batches": 1},
    "model": {
        "class_path": "memnet.lightning.SequenceModule",
        "init_args": {"net": {
            "class_path": "memnet.models.ntm.NTM",
            "init_args": {"memory_size": 7, "word_size": 5, "controller": {
                "class_path": "memnet.controllers.LSTMController", "init_args": {"hidden_size": 4}}},
        }},
    },
    "data": {
        "class_path": "tasks.algorithmic.AlgorithmicDataModule",
        "init_args": {
            "task": {"class_path": "tasks.algorithmic.CopyTask",
                     "init_args": {"width": 3, "min_length": 1, "max_length": 4}},
            "batch_size": 3, "batches_per_epoch": 2, "val_lengths": [4], "val_size": 3,
        },
    },
}


def tiny_run(*, trainer: dict | None = None, net: dict | None = None, data: dict | None = None) -> str:
    """The run's config with ``trainer``, the network's ``init_args`` and the data's ``init_args`` updated."""
    config = copy.deepcopy(BASE)
    config["trainer"].update(trainer or {})
    config["model"]["init_args"]["net"]["init_args"].update(net or {})
    config["data"]["init_args"].update(data or {})
    return yaml.safe_dump(config, sort_keys=False)
