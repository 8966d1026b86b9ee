"""``memnet figures``: the chapter's pictures, drawn by the real models, in one command.

    memnet figures [--only NAME ...] [--out DIR] [--checkpoints DIR] [--seed 0]

Draws every figure (or those named with ``--only``) into ``docs/figures/`` (or ``--out``);
``docs/figures.md`` shows them. A figure that needs a trained model reads it from
``--checkpoints DIR`` when that folder holds ``<role>.ckpt`` (a checkpoint of ``memnet fit``,
rebuilt from the run's ``config.yaml`` beside its ``checkpoints/`` folder, or from
``<role>.yaml`` in DIR; a symbolic link to ``runs/memnet/<run>/checkpoints/last.ckpt`` will
do), and otherwise trains a small one, in seconds to about a minute on a 2-core CPU (fixed seed;
nothing is saved; docs/figures.md lists the recipes and the measured times).

Roles (the checkpoint names) and what they must hold:

    rnn  lstm  gru               RecurrentModel with an ElmanRNN / LSTMController / GRUController
    ntm-copy  ntm-repeat-copy    NTM on copy / repeat copy
    dnc-copy  dnc-repeat-copy    DNC on copy / repeat copy
    memn2n                       MemN2N on bAbI (the data module's vocabulary names the sentences)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memnet.cli.typos import CommandParser
from memnet.controllers import ElmanRNN, GRUController, LSTMController
from memnet.figures.access import draw_memory_access
from memnet.figures.attention import memn2n_attention, plot_memn2n_attention
from memnet.figures.composition import draw_composition
from memnet.figures.echo_state import draw_echo_state, reservoir_args
from memnet.figures.graph import draw_unrolled_graphs, unrolled_graph
from memnet.figures.training import masked_bits_per_sequence, train_qa_model, train_sequence_model
from memnet.models.dnc import DNC
from memnet.models.memn2n import MemN2N
from memnet.models.ntm import NTM
from memnet.models.recurrent import RecurrentModel
from memnet.plots import plot_error_vs_length
from memnet.probe import gradient_through_time, plot_gradient_panels
from tasks.algorithmic import CopyTask, RepeatCopyTask

DEFAULT_OUT = Path("docs/figures")
ESN_CONFIG = "esn/narma10"  # a shipped config (the clone's configs/ or the installed memnet.configs)
ERROR_LENGTHS = (0.5, 1, 1.5, 2, 3, 4)  # error against length: these multiples of the longest training length
BABI_TASK, BABI_EPOCHS = 2, 30  # two supporting facts: the hops read different sentences
MIN_SENTENCES = 6  # the attention figure shows the first test story (from --seed on) with at least this many
ERROR_SEQUENCES = 64  # fresh sequences scored at each of those lengths
PROBE_FACTOR = 2  # the gradient-through-time batch: copies of twice the longest training length


class FigureError(ValueError):
    """A request ``memnet figures`` cannot honour: an unknown figure, a checkpoint of the wrong kind."""


# ----------------------------------------------------------------------------- models: read or train


@dataclass(frozen=True)
class Role:
    """A trained model a figure needs: what it must be, and how to train a small one.

    Attributes:
        kind: what the checkpoint must hold, in words (said when it holds something else).
        fits: whether a network is of that kind.
        train: seed -> (trained network, task or data module, a line on how far training got);
            a ``Recipe`` for the algorithmic tasks.
    """

    kind: str
    fits: Callable[[nn.Module], bool]
    train: Callable[[int], tuple[nn.Module, Any, str]]


def _copy_task() -> CopyTask:
    return CopyTask(width=6, min_length=1, max_length=6)


def _repeat_copy_task() -> RepeatCopyTask:
    return RepeatCopyTask(width=6, min_length=1, max_length=4, min_repeats=1, max_repeats=3)


def _recurrent(controller: type) -> Callable[[Any], nn.Module]:
    return lambda task: RecurrentModel(task.input_size, task.output_size,
                                       controller=partial(controller, hidden_size=100))


def _ntm(task: Any) -> nn.Module:
    return NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=64),
               memory_size=16, word_size=12)


def _dnc(task: Any) -> nn.Module:
    return DNC(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=64),
               memory_size=16, word_size=12)


@dataclass(frozen=True)
class Recipe:
    """How ``memnet figures`` trains a small model on an algorithmic task when no checkpoint is given.

    Attributes:
        build: task -> a fresh network for it.
        task: () -> the task (its training lengths).
        steps: training steps of 16 sequences each.
        lr: Adam's learning rate.
    """

    build: Callable[[Any], nn.Module]
    task: Callable[[], Any]
    steps: int
    lr: float

    def __call__(self, seed: int) -> tuple[nn.Module, Any, str]:
        task = self.task()
        net = self.fresh(seed, task)
        sample = lambda generator: task.sample_batch(generator, 16, task.sample_length(generator))
        start = time.perf_counter()
        train_sequence_model(net, sample, steps=self.steps, lr=self.lr, seed=seed)
        seconds = time.perf_counter() - start
        held_out = task.sample_batch(torch.Generator().manual_seed(seed + 1), 64, task.max_length)
        with torch.no_grad():
            cost = float(masked_bits_per_sequence(net(held_out["inputs"]), held_out))
        return net, task, (f"{self.steps} steps in {seconds:.0f} s; {cost:.2f} bits per sequence on 64 fresh "
                           f"sequences of length {task.max_length}")

    def fresh(self, seed: int, task: Any | None = None) -> nn.Module:
        """The untrained network (initialised from ``seed``)."""
        torch.manual_seed(seed)
        return self.build(task if task is not None else self.task()).eval()


def _train_memn2n(seed: int) -> tuple[nn.Module, Any, str]:
    from tasks.babi import BabiDataModule

    data = BabiDataModule(tasks=BABI_TASK, size="1k", memory_size=50, batch_size=32, seed=seed)
    try:
        data.setup("fit")
        data.setup("test")
    except FileNotFoundError as error:
        raise FigureError(f"the memn2n-attention figure trains on bAbI task {BABI_TASK} and found no data: {error} "
                          "(fetch it with `memnet data babi`, or give --checkpoints with a memn2n.ckpt)") from None
    torch.manual_seed(seed)
    net = MemN2N(data.input_size, data.output_size, embedding_size=20, hops=3, memory_size=50, seed=seed)
    start = time.perf_counter()
    error = train_qa_model(net, data.train_dataloader, epochs=BABI_EPOCHS, lr=0.01, seed=seed)
    return net, data, (f"{BABI_EPOCHS} epochs of bAbI task {BABI_TASK} (1k) in {time.perf_counter() - start:.0f} s, "
                       f"training error {error:.1f}%")


def _controller_is(kind: type) -> Callable[[nn.Module], bool]:
    return lambda net: isinstance(net, RecurrentModel) and type(net.controller) is kind


ROLES: dict[str, Role] = {
    "rnn": Role("a RecurrentModel with an ElmanRNN controller (e.g. configs/rnn/copy.yaml)",
                _controller_is(ElmanRNN), Recipe(_recurrent(ElmanRNN), _copy_task, 2000, 1e-3)),
    "lstm": Role("a RecurrentModel with an LSTMController (e.g. configs/lstm/copy.yaml)",
                 _controller_is(LSTMController), Recipe(_recurrent(LSTMController), _copy_task, 4000, 1e-2)),
    "gru": Role("a RecurrentModel with a GRUController (e.g. configs/gru/copy.yaml)",
                _controller_is(GRUController), Recipe(_recurrent(GRUController), _copy_task, 4000, 1e-2)),
    "ntm-copy": Role("an NTM trained on copy (e.g. configs/ntm/copy.yaml)",
                     lambda net: isinstance(net, NTM), Recipe(_ntm, _copy_task, 900, 1e-2)),
    "ntm-repeat-copy": Role("an NTM trained on repeat copy (e.g. configs/ntm/repeat_copy.yaml)",
                            lambda net: isinstance(net, NTM), Recipe(_ntm, _repeat_copy_task, 1200, 1e-2)),
    "dnc-copy": Role("a DNC trained on copy (e.g. configs/dnc/copy.yaml)",
                     lambda net: isinstance(net, DNC), Recipe(_dnc, _copy_task, 800, 1e-2)),
    "dnc-repeat-copy": Role("a DNC trained on repeat copy (e.g. configs/dnc/repeat_copy.yaml)",
                            lambda net: isinstance(net, DNC), Recipe(_dnc, _repeat_copy_task, 900, 1e-2)),
    "memn2n": Role("a MemN2N trained on bAbI (e.g. configs/memn2n/babi_task_1k.yaml)",
                   lambda net: isinstance(net, MemN2N), _train_memn2n),
}


def describe(net: nn.Module) -> str:
    """``NTM with an LSTMController`` — the network's class and its controller's, for error messages."""
    controller = getattr(net, "controller", None)
    text = f"{_article(type(net).__name__)} {type(net).__name__}"
    if isinstance(controller, nn.Module):
        text += f" with {_article(type(controller).__name__)} {type(controller).__name__}"
    return text


def _article(name: str) -> str:
    """``an`` before a name said with a vowel sound (``an LSTMController``, ``an NTM``), else ``a``."""
    return "an" if name[0] in "AEIOU" or name.startswith(("LSTM", "NTM", "RNN", "MLP")) else "a"


class Models:
    """The trained models of one ``memnet figures`` run: read from ``checkpoints`` or trained once, then kept."""

    def __init__(self, checkpoints: Path | None, *, seed: int = 0, log: Callable[[str], None] = print) -> None:
        if checkpoints is not None and not checkpoints.is_dir():
            raise FigureError(f"--checkpoints: {checkpoints} is not a folder")
        self.checkpoints = checkpoints
        self.seed = seed
        self.log = log
        self._cache: dict[str, tuple[nn.Module, Any]] = {}

    def get(self, role: str, figure: str) -> tuple[nn.Module, Any]:
        """The network of ``role`` (eval mode) and its task (or data module)."""
        if role not in self._cache:
            path = self.checkpoints / f"{role}.ckpt" if self.checkpoints is not None else None
            if path is not None and path.is_file():
                net, data = self._read(path)
                self.log(f"  {role}: {path}")
            else:
                net, data, summary = ROLES[role].train(self.seed)
                self.log(f"  {role}: trained {describe(net)}, {summary}")
            self._cache[role] = (net.eval(), data)
        net, data = self._cache[role]
        if not ROLES[role].fits(net):
            raise FigureError(f"{self.source(role)} holds {describe(net)}; the {figure} figure needs {ROLES[role].kind}")
        return net, data

    def source(self, role: str) -> Path | str:
        """Where ``role``'s model came from, for errors: its checkpoint, else the role's name (trained here)."""
        return self.checkpoints / f"{role}.ckpt" if self.checkpoints is not None else role

    def untrained(self, role: str) -> nn.Module | None:
        """The trained ``role``'s architecture freshly initialised (seeded); None if it came from a checkpoint."""
        if self.checkpoints is not None and (self.checkpoints / f"{role}.ckpt").is_file():
            return None
        recipe = ROLES[role].train
        return recipe.fresh(self.seed) if isinstance(recipe, Recipe) else None

    def _read(self, path: Path) -> tuple[nn.Module, Any]:
        from memnet.cli.rebuild import RebuildError as EvaluationError
        from memnet.cli.rebuild import build, default_config

        config = path.with_suffix(".yaml")
        try:
            config = config if config.is_file() else default_config(path)
            module, data = build([config], path, torch.device("cpu"))
        except EvaluationError as error:
            raise FigureError(f"{path}: {error}") from None
        return module.net, getattr(data, "task", data)


# ----------------------------------------------------------------------------- the figures


def figure_composition(out: Path, models: Models, seed: int) -> list[Path]:
    trained = {}
    for role, name in (("lstm", "LSTM"), ("gru", "GRU")):
        net, _ = models.get(role, "composition")
        trained[f"trained {name} controller, {net.controller.hidden_size} units"] = net.controller
    path, _ = draw_composition(out / "composition.png", trained=trained, seed=seed)
    return [path]


def figure_echo_state(out: Path, models: Models, seed: int) -> list[Path]:
    from memnet.cli.configs import find_config, load_config

    config = find_config(ESN_CONFIG)
    path, _ = draw_echo_state(out / "echo_state.png", reservoir_args(load_config(config), str(config)), seed=seed)
    return [path]


def figure_graph(out: Path, models: Models, seed: int) -> list[Path]:
    torch.manual_seed(seed)
    controller = LSTMController(3, hidden_size=4)
    model = RecurrentModel(3, 2, controller=partial(LSTMController, hidden_size=4))
    graphs = {"one step of memnet.controllers.LSTMController: (x(t), h(t−1), c(t−1)) → (h(t), c(t))":
              unrolled_graph(controller, steps=1),
              "memnet.models.recurrent.RecurrentModel (LSTM controller + linear output) unrolled over 3 steps: "
              "the same parameters feed every step": unrolled_graph(model, steps=3)}
    return [draw_unrolled_graphs(out / "unrolled_graph.png", graphs)]


def figure_gradient(out: Path, models: Models, seed: int) -> list[Path]:
    roles = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru", "NTM": "ntm-copy"}

    def probe(net: nn.Module, task: Any) -> tuple[torch.Tensor, int]:
        """‖∂L/∂h(t)‖ on 16 copies of twice the longest training length (each model on its own task)."""
        length = PROBE_FACTOR * task.max_length
        batch = task.sample_batch(torch.Generator().manual_seed(seed), 16, length)
        return gradient_through_time(net, batch["inputs"], batch["targets"], mask=batch["mask"]), length

    panels: dict[str, dict[str, torch.Tensor]] = {}
    lengths: set[int] = set()
    initial = {label: models.untrained(role) for label, role in roles.items()}
    if all(net is not None for net in initial.values()):
        curves = {}
        for label, net in initial.items():
            curves[label], length = probe(net, _copy_task())
            lengths.add(length)
        panels["at initialisation"] = curves
    curves, trained_on = {}, {}
    for label, role in roles.items():
        net, task = models.get(role, "gradient")
        curves[label], length = probe(net, task)
        lengths.add(length)
        trained_on[label] = task_words(task)
    # a checkpoint's model is probed on its own task, which need not be copy (a role takes any model of its kind)
    on = (next(iter(trained_on.values())) if len(set(trained_on.values())) == 1
          else ", ".join(f"{label} {words}" for label, words in trained_on.items()))
    panels[f"trained on {on}"] = curves
    marker = next(iter(lengths)) if len(lengths) == 1 else None  # the delimiter, when all share one length
    item = "copy" if set(trained_on.values()) == {"copy"} else "sequence"
    where = f"a {item} of length {marker}" if marker is not None else f"{item}s of twice the training length"
    titled = {f"{title} (loss at the last step of {where})": panel for title, panel in panels.items()}
    return [plot_gradient_panels(out / "gradient_through_time.png", titled, marker=marker)]


def task_words(task: Any) -> str:
    """The task in a caption's words: ``copy``, ``repeat copy``, else its class name (``AssociativeRecallTask``).

    A role's checkpoint is any model of its kind, whatever it was trained on (an NTM of repeat copy as ``ntm-copy``):
    the captions say the task that was drawn, not the role's.
    """
    return {CopyTask: "copy", RepeatCopyTask: "repeat copy"}.get(type(task), type(task).__name__)


def _access(role: str, name: str, length: int, repeats: int | None = None) -> Callable[[Path, Models, int], list[Path]]:
    def draw(out: Path, models: Models, seed: int) -> list[Path]:
        net, task = models.get(role, name)
        generator = torch.Generator().manual_seed(seed)
        extra = {} if repeats is None else {"repeats": repeats}
        if repeats is not None and not isinstance(task, RepeatCopyTask):  # a model of copy as ntm-repeat-copy.ckpt:
            # CopyTask.sample_batch() got an unexpected keyword argument 'repeats', no file named
            raise FigureError(f"{models.source(role)} holds {describe(net)} trained on {task_words(task)}; the "
                              f"{name} figure needs {ROLES[role].kind}")
        batch = task.sample_batch(generator, 1, min(length, task.max_length), **extra)
        title = f"{type(net).__name__} on {type(task).__name__}"
        return draw_memory_access(out / f"{role.replace('-', '_')}_memory_access.png", net, batch, title=title)
    return draw


def figure_error_vs_length(out: Path, models: Models, seed: int) -> list[Path]:
    from memnet.cli.evaluate import evaluate_length, slots_for

    net, task = models.get("ntm-copy", "error-vs-length")
    holder = nn.Module()
    holder.net = net
    rows = []
    for length in sorted({max(1, round(factor * task.max_length)) for factor in ERROR_LENGTHS}):
        slots = slots_for(task, length, net.memory_size, None)
        row, _ = evaluate_length(holder, task, length, slots=slots, num_sequences=ERROR_SEQUENCES, batch_size=64, seed=seed,
                                 device=torch.device("cpu"))
        rows.append(row)
    path = plot_error_vs_length(out / "ntm_copy_error_vs_length.png", rows=rows,
                                train_range=(task.min_length, task.max_length), title=f"NTM on {task_words(task)}")
    return [path]


def figure_memn2n_attention(out: Path, models: Models, seed: int) -> list[Path]:
    net, data = models.get("memn2n", "memn2n-attention")
    if not hasattr(data, "split"):
        raise FigureError("the memn2n-attention figure needs the checkpoint's bAbI data module (tasks.babi)")
    test = data.dataset["test"]
    split = data.split("test")
    index = next((i for i in range(seed % len(split), len(split)) if len(test[i]["story"]) >= MIN_SENTENCES),
                 seed % len(split))
    example, row = split[index], test[index]
    story = torch.as_tensor(example["story"])
    attention, predicted = memn2n_attention(net, story, torch.as_tensor(example["query"]))
    kept = row["story"][-story.shape[0]:]  # the sentences the data module put in memory (its memory_size, not the net's)
    sentences = [" ".join(words) for words in reversed(kept)]  # slot 0 is the most recent sentence
    supporting = [len(kept) - 1 - (i - (len(row["story"]) - len(kept))) for i in row["supporting"]
                  if i >= len(row["story"]) - len(kept)]
    vocabulary = data.vocabulary
    path = plot_memn2n_attention(out / "memn2n_attention.png", attention, sentences=sentences,
                                 question=" ".join(row["query"]), answer=row["answer"],
                                 predicted=_predicted_word(vocabulary, net, int(predicted)), supporting=supporting,
                                 softmax=bool(getattr(net, "softmax_enabled", True)))  # False: in its linear start
    return [path]


def _predicted_word(vocabulary: Any, net: Any, column: int) -> str:
    """The word of an answer column: an answer class, or, with ``answer_layer: vocabulary``, any other column
    (the specials, the other words, then the time words: ``MemN2N.answer_weight``'s order), marked as no answer."""
    answers = vocabulary.num_answers
    if column < answers:
        return vocabulary.decode_answer(column)
    offset = getattr(net, "answer_offset", 0)
    token = column - answers if column < answers + offset else column
    word = vocabulary.tokens[token] if token < len(vocabulary.tokens) else f"time word {token - len(vocabulary.tokens)}"
    return f"{word} (not an answer)"


FIGURES: dict[str, Callable[[Path, Models, int], list[Path]]] = {
    "composition": figure_composition,
    "echo-state": figure_echo_state,
    "graph": figure_graph,
    "gradient": figure_gradient,
    "ntm-copy": _access("ntm-copy", "ntm-copy", 10),
    "ntm-repeat-copy": _access("ntm-repeat-copy", "ntm-repeat-copy", 4, repeats=3),
    "dnc-copy": _access("dnc-copy", "dnc-copy", 10),
    "dnc-repeat-copy": _access("dnc-repeat-copy", "dnc-repeat-copy", 4, repeats=3),
    "error-vs-length": figure_error_vs_length,
    "memn2n-attention": figure_memn2n_attention,
}


def check_names(names: Sequence[str]) -> list[str]:
    """The figures to draw, in the order of ``FIGURES``; an unknown name raises ``FigureError`` listing the known ones."""
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        raise FigureError(f"unknown figure {', '.join(map(repr, unknown))}; known figures: {', '.join(FIGURES)}")
    return [name for name in FIGURES if name in names]


def draw(names: Sequence[str] | None = None, *, out: Path = DEFAULT_OUT, checkpoints: Path | None = None,
         seed: int = 0, log: Callable[[str], None] = print) -> list[Path]:
    """Draw the named figures (default all) into ``out``; returns the PNGs written."""
    chosen = check_names(names) if names else list(FIGURES)
    models = Models(checkpoints, seed=seed, log=log)
    written = []
    for name in chosen:
        start = time.perf_counter()
        log(f"{name}:")
        paths = FIGURES[name](out, models, seed)
        log(f"  wrote {', '.join(map(str, paths))} ({time.perf_counter() - start:.0f} s)")
        written += paths
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """``memnet figures [--only NAME ...] [--out DIR] [--checkpoints DIR] [--seed N] [--threads N]``."""
    parser = CommandParser(prog="memnet figures",
                                     description="Draw the chapter's pictures with memnet's own models.",
                                     epilog=f"figures: {', '.join(FIGURES)}")
    # extend: a second --only adds its names (the default, store, kept only the last --only's, the rest unsaid)
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                        help=f"draw only these ({', '.join(FIGURES)}); repeatable")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help=f"folder of <role>.ckpt checkpoints to draw from ({', '.join(ROLES)}); "
                             "a role without one is trained briefly")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw and every training run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:  # torch's RuntimeError traceback otherwise
        parser.error(f"--threads must be a positive number of threads, got {args.threads}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return draw(args.only, out=args.out, checkpoints=args.checkpoints, seed=args.seed)
    except FigureError as error:
        print(f"memnet figures: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
