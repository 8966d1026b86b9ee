"""The core that every memory-augmented network shares (NTM, DNC, ...).

A memory model is a controller, a memory it reads and writes, and an output
layer over concat(h_t, r_t). What differs between models is one method,
``access``: how the controller output h_t addresses, writes and reads the
memory. ``MemoryModel`` owns the rest:

    - the controller, built for the input width D_in + R·W, and the output layer;
    - the preamble of ``initial_state`` (memory size, device and dtype);
    - the step loop over a whole sequence, and the per-step trace for plots;
    - the execution path (``engine``):

        eager     the reference: the pure functions of ``memnet.addressing``,
                  ``memnet.memory`` and ``memnet.allocation`` at every step, autograd
                  differentiates them. Slowest; for debugging.
        fused     the same arithmetic with the fused operations of ``memnet.fused``
                  (hand-written backward passes over all heads at once), and the work
                  that does not depend on the recurrence hoisted out of the loop: the
                  controller's input projection of x_t for all t, and the output layer
                  over all t as one matmul. Tested equal to eager.
        compiled  the fused step compiled by ``torch.compile`` (inductor), ``compile_unroll``
                  time steps per call (default 4 on the CPU, see ``auto_unroll_max_batch``,
                  and 8 on a GPU; the last T mod K steps one at a time): a call costs its
                  guards and autograd wrappers, which at small batches cost as much as
                  the step's kernels;
                  the NTM compiles one step a call from batch 64, where its unrolled
                  graph was slower (``make bench``). Sequence lengths never
                  recompile (the functions do not see T: two graphs, K steps and one);
                  a new batch size or memory size recompiles once with dynamic shapes.
                  When the installed torch cannot compile (e.g. no C++ compiler) the
                  model logs why and runs the fused path instead. ``compile_mode`` is
                  inductor's mode: ``reduce-overhead`` replays each compiled graph as a
                  CUDA graph on a GPU (one launch for a graph's kernels, forward and
                  backward; each forward begins a new CUDA-graph step, so a forward's
                  backward must run before the next forward, as in Lightning's training
                  loop), and is plain inductor on the CPU. The default, ``auto``, is
                  ``reduce-overhead`` on a GPU and inductor's default on the CPU: on an
                  H200 it made the NTM's training step 13x faster at batch 1 and 9.6x
                  at batch 128 than the fused path (``benchmarks/results``).

A new memory model subclasses ``MemoryModel``, builds its own modules between
``_build_controller`` and ``_build_output`` (so parameters keep their order),
and implements ``initial_state``, ``access`` and, for plots, ``trace_step``.

Axes:  b - batch, t - time, r - read heads, w - slot width
"""

from __future__ import annotations

import functools
import logging
import time
import types
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from einops import rearrange
from torch import nn

from memnet.controllers import ControllerFactory, LSTMController
from memnet.utils import check_positive, check_sequence_inputs

log = logging.getLogger(__name__)

Engine = Literal["eager", "fused", "compiled"]
ENGINES = ("eager", "fused", "compiled")
# inductor's modes (torch.compile(mode=...)); the CUDA-graph ones replay each graph as one launch
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# The compiled engine's default time steps per call; a model's ``auto_unroll_max_batch`` is the batch
# from which it compiles one step a call instead. Measured by ``make bench`` (2-core CPU): 4 steps a
# call made the NTM 34% faster at batch 1 and 8% at 32 but 20% slower at 128; the DNC 64%, 49% and
# 9% faster at batch 1, 32 and 128.
AUTO_UNROLL = 4
# On a GPU, at every batch size: fewer, longer graphs to launch. With CUDA graphs on an H200 the NTM
# step at batch 128 took 15.4 ms with 8 steps a call and 14.2 ms with 20, whose graphs took 58.7 s
# to compile instead of 30 s (benchmarks/results/train_step_cuda_h200.json).
CUDA_AUTO_UNROLL = 8

# The compiled step functions. One ``torch.compile`` per model class, step method, backend and mode,
# shared by every model of the class (``_SHARED``): the model is an argument of the compiled function, not captured
# in it, so a second model of the same sizes runs the graphs the first one compiled, and a
# model is freed like any other once the user drops it. Per model (``_COMPILED``, off the
# module, so that a model still pickles, deep-copies and saves exactly as an uncompiled one)
# only which shared function each of its keys runs, holding no reference to the model.
_SHARED: dict[tuple, Callable] = {}
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Callable]] = weakref.WeakKeyDictionary()
# dynamo compiles at most ``recompile_limit`` (8 in torch 2.13) variants of one function, then
# runs it uncompiled without a word; memnet's step functions are shared by every model of a
# class, each set of sizes a variant, so they may keep this many, and a call past them is logged.
RECOMPILE_LIMIT = 64
_OWNERS: list[nn.Module] = []  # the models whose compiled calls are running (the innermost last)


def check_engine(engine: str) -> str:
    """Raise ``ValueError`` unless ``engine`` is one of ``ENGINES``."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    return engine


class AccessResult(NamedTuple):
    """What one memory access returns to the step loop.

    Attributes:
        read_vectors: (B, R, W) read vectors r_t.
        state: the model's new state (its controller state included).
        extras: what the model's trace needs beyond the state (e.g. the DNC's interface), or None.
    """

    read_vectors: torch.Tensor
    state: Any
    extras: Any


class MemoryModel(nn.Module):
    """Base of the networks that couple a controller to an external memory.

    Args:
        input_size: D_in, width of one input step.
        output_size: D_out, width of one output step (logits).
        controller: factory ``input_size -> Controller``; default an LSTM with 100 units.
        memory_size: N, slots.
        word_size: W, slot width.
        num_reads: R, read heads.
        engine: execution path, ``eager``, ``fused`` or ``compiled`` (see the module).
        compile_backend: the ``torch.compile`` backend of the ``compiled`` engine.
        compile_unroll: time steps per call of the compiled function (``compiled`` engine);
            None: ``AUTO_UNROLL`` below batch ``auto_unroll_max_batch`` (a class attribute), else 1.
        compile_mode: inductor's mode (``COMPILE_MODES``) for the ``compiled`` engine: ``auto`` (default:
            ``reduce-overhead``, i.e. CUDA graphs, on a GPU; inductor's default on the CPU), None
            (inductor's default everywhere) or one of inductor's modes.
    """

    auto_unroll_max_batch: int | None = None  # compile one step a call from this batch (None: never)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        controller: ControllerFactory | None,
        memory_size: int,
        word_size: int,
        num_reads: int,
        engine: Engine,
        compile_backend: str | Callable = "inductor",
        compile_unroll: int | None = None,
        compile_mode: str | None = "auto",
        **sizes: int,
    ) -> None:
        super().__init__()
        check_positive(
            input_size=input_size,
            output_size=output_size,
            memory_size=memory_size,
            word_size=word_size,
            num_reads=num_reads,
            **sizes,
        )
        if compile_unroll is not None:
            check_positive(compile_unroll=compile_unroll)
        self.input_size = input_size
        self.output_size = output_size
        self.memory_size = memory_size
        self.word_size = word_size
        self.num_reads = num_reads
        self.engine = check_engine(engine)
        self.compile_backend = compile_backend
        self.compile_unroll = compile_unroll
        self.compile_mode = check_compile_mode(compile_mode, compile_backend)
        self.compilations = 0  # graphs compiled by the ``compiled`` engine so far
        self._controller_factory = controller if controller is not None else LSTMController

    # -- construction ---------------------------------------------------------

    def _build_controller(self) -> None:
        """The controller, reading concat(x_t, r_{t−1}) of width D_in + R·W."""
        self.controller = self._controller_factory(self.input_size + self.num_reads * self.word_size)
        del self._controller_factory

    def _build_output(self) -> None:
        """The output layer y_t = output(concat(h_t, r_t))."""
        self.output = nn.Linear(self.controller.output_size + self.num_reads * self.word_size, self.output_size)

    def _state_options(
        self, batch_size: int, memory_size: int | None, device: torch.device | None, dtype: torch.dtype | None
    ) -> tuple[int, torch.device, torch.dtype]:
        """The preamble of ``initial_state``: N for this episode (checked), device and dtype."""
        memory_size = self.memory_size if memory_size is None else memory_size  # 0 is refused, not the trained N
        check_positive(batch_size=batch_size, memory_size=memory_size)
        return memory_size, device or self.output.weight.device, dtype or self.output.weight.dtype

    # -- what a model defines -------------------------------------------------

    def initial_state(self, batch_size: int, **options: Any) -> Any:
        raise NotImplementedError

    def access(self, hidden: torch.Tensor, controller_state: Any, state: Any, *, fused: bool) -> AccessResult:
        """Address, write and read the memory from the controller output.

        Args:
            hidden: (B, D_h) controller output h_t.
            controller_state: the controller's new state (to be stored in the new state).
            state: the model's previous state.
            fused: use the fused operations (else the reference functions).
        """
        raise NotImplementedError

    def trace_step(self, state: Any, extras: Any) -> tuple[torch.Tensor, ...]:
        """The trace fields of one step, each without the time axis."""
        raise NotImplementedError

    # -- running ---------------------------------------------------------------

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One step (reference path): x (B, D_in) -> logits (B, D_out) and the new state."""
        logits, state, _ = self._reference_step(x, state)
        return logits, state

    def _reference_step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, Any]:
        controller_input = torch.cat([x, _flat(state.read_vectors)], dim=-1)
        hidden, controller_state = self.controller.step(controller_input, state.controller)
        read_vectors, state, extras = self.access(hidden, controller_state, state, fused=self.engine != "eager")
        logits = self.output(torch.cat([hidden, _flat(read_vectors)], dim=-1))
        return logits, state, extras

    def _fused_step(self, projected: torch.Tensor, context: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One step of the fused path: the projected input x_t (B, P) -> h_t, r_t and the new state."""
        hidden, controller_state = self.controller.projected_step(
            projected, _flat(state.read_vectors), state.controller, context
        )
        read_vectors, state, _ = self.access(hidden, controller_state, state, fused=True)
        return hidden, read_vectors, state

    def forward(
        self,
        inputs: torch.Tensor,
        *,
        state: Any = None,
        memory_size: int | None = None,
        return_trace: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple]:
        """Run a whole sequence.

        Args:
            inputs: (B, T, D_in).
            state: a starting state; default ``initial_state``.
            memory_size: N for this call (default ``self.memory_size``); ignored with ``state``.
            return_trace: also return the model's trace (per-step weightings, for plots).

        Returns:
            logits (B, T, D_out), and with ``return_trace`` the trace.
        """
        check_sequence_inputs(inputs, self.input_size, model=type(self).__name__, memory_size=memory_size)
        if self.engine not in ENGINES:  # set on the built model (``net.engine = ...``), not checked then
            check_engine(self.engine)
        if state is None:
            state = self.initial_state(
                inputs.shape[0], memory_size=memory_size, device=inputs.device, dtype=inputs.dtype
            )
        if self.engine == "eager" or return_trace:
            return self._reference_loop(inputs, state, return_trace)
        return self._fused_loop(inputs, state)

    def _reference_loop(self, inputs: torch.Tensor, state: Any, return_trace: bool):
        outputs, steps = [], []
        for t in range(inputs.shape[1]):
            logits, state, extras = self._reference_step(inputs[:, t], state)
            outputs.append(logits)
            if return_trace:
                steps.append(self.trace_step(state, extras))
        logits = torch.stack(outputs, dim=1)
        if not return_trace:
            return logits
        return logits, self._make_trace([torch.stack(field, dim=1) for field in zip(*steps)])

    def _make_trace(self, fields: list[torch.Tensor]) -> tuple:
        raise NotImplementedError

    def _fused_steps(self, projected: torch.Tensor, context: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """K steps of the fused path: projected (K, B, P) -> h (K, B, D_h), r (K, B, R·W), the new state."""
        hiddens, reads = [], []
        for projected_t in projected.unbind(0):
            hidden, read_vectors, state = self._fused_step(projected_t, context, state)
            hiddens.append(hidden)
            reads.append(_flat(read_vectors))
        return torch.stack(hiddens), torch.stack(reads), state

    def _fused_loop(self, inputs: torch.Tensor, state: Any) -> torch.Tensor:
        compiled_engine = self.engine == "compiled"
        mode = self._compile_mode_on(inputs.device) if compiled_engine else None
        if inputs.is_cuda and mode in CUDA_GRAPH_MODES:
            # A new CUDA-graph step: the graphs' outputs of the previous forward (consumed by
            # then: the loop returns logits of its own) may be overwritten from here on.
            torch.compiler.cudagraph_mark_step_begin()
        one_step = self._compiled_step(mode) if compiled_engine else self._fused_step
        unroll = self._unroll(inputs.shape[0], inputs.device) if compiled_engine else 1
        # Time first and contiguous: every step's slice has the same strides whatever T
        # is, so that a compiled step is not recompiled for another sequence length. The
        # inputs (D_x wide) are put time first, not the projection (P = 4H wide for an
        # LSTM): the projection comes out time first, with no copy of it either way.
        projected, context = self.controller.project_inputs(rearrange(inputs, "b t d -> t b d"))  # (T, B, P), once
        steps = projected.shape[0]
        # The first step runs uncompiled: its state comes from ``initial_state`` (no
        # autograd history), which a compiled step would need a graph of its own for.
        # Then K steps a call, and the last T − 1 mod K one at a time. ``split`` into those
        # pieces, views: its backward is one concatenation, where the backward of every
        # index would fill a zero tensor of the whole sequence (O(T²)).
        chunks = (steps - 1) // unroll if unroll > 1 else 0
        pieces = projected.contiguous().split([1] + [unroll] * chunks + [1] * (steps - 1 - chunks * unroll))
        hidden, read_vectors, state = self._fused_step(pieces[0][0], context, state)
        hiddens, reads = [hidden.unsqueeze(0)], [_flat(read_vectors).unsqueeze(0)]  # (K, B, ·) per call
        k_steps = self._compiled_steps(unroll, mode) if chunks else None  # looked up once, not once a call
        for piece in pieces[1:]:
            if piece.shape[0] > 1:  # K steps in one call
                hidden, read_vectors, state = k_steps(piece, context, state)
                hiddens.append(hidden)
                reads.append(read_vectors)
            else:
                hidden, read_vectors, state = one_step(piece[0], context, state)
                hiddens.append(hidden.unsqueeze(0))
                reads.append(_flat(read_vectors).unsqueeze(0))
        features = torch.cat([torch.cat(hiddens), torch.cat(reads)], dim=-1)  # (T, B, D_h + R·W)
        return rearrange(self.output(features), "t b o -> b t o")  # (B, T, D_out), one matmul over all t

    def _unroll(self, batch_size: int, device: torch.device | None = None) -> int:
        if self.compile_unroll is not None:
            return self.compile_unroll
        if device is not None and device.type == "cuda":
            return CUDA_AUTO_UNROLL
        limit = self.auto_unroll_max_batch
        return AUTO_UNROLL if limit is None or batch_size < limit else 1

    def _compile_mode_on(self, device: torch.device) -> str | None:
        """The inductor mode for inputs on ``device``: ``auto`` is CUDA graphs on a GPU, the default elsewhere."""
        mode = getattr(self, "compile_mode", None)  # None for a model pickled before the option existed
        if self.compile_backend != "inductor":  # modes are inductor's
            return None
        if mode == "auto":
            return "reduce-overhead" if device.type == "cuda" else None
        return mode

    def _compiled_step(self, mode: str | None = None) -> Callable:
        return compiled(self, "step", self._fused_step, self.compile_backend, fallback="the fused path", mode=mode)

    def _compiled_steps(self, unroll: int, mode: str | None = None) -> Callable:
        return compiled(self, f"{unroll} steps", self._fused_steps, self.compile_backend, fallback="the fused path",
                        mode=mode)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, R, W) -> (B, R·W)."""
    return x.flatten(1)


def check_compile_mode(mode: str | None, backend: str | Callable = "inductor") -> str | None:
    """Raise ``ValueError`` unless ``mode`` is None, ``auto`` or one of ``COMPILE_MODES`` with inductor."""
    if mode is None or mode == "auto":
        return mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be 'auto', one of {list(COMPILE_MODES)} or null, got {mode!r}")
    if backend != "inductor":
        raise ValueError(f"compile_mode {mode!r} is a mode of the inductor backend; compile_backend is {backend!r}")
    return mode


# dynamo's compile triggers that the CompileClock times, and what it calls them
_COMPILE_KINDS = {"DYNAMO": "trace and compile", "LAZY_BACKWARD": "backward"}


class CompileClock:
    """The wall time ``torch.compile`` spends in this process, complete.

    A graph's first call traces it (dynamo) and compiles its forward; AOTAutograd compiles
    its backward later, lazily, at the first backward through it. A backend's own time
    (what ``compiled`` logs per graph) misses the tracing and the backward. The clock
    listens to dynamo's compile callbacks for both (``torch._dynamo.callback``), logs each
    with its time and keeps the sum. The callbacks are the process's: every
    ``torch.compile`` counts, memnet's or not.

    Attributes:
        seconds: the total so far.
        events: (what, compile id, seconds) of each compilation, in order; ``what`` is
            ``trace and compile`` (dynamo) or ``backward`` (AOTAutograd's lazy backward).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.events: list[tuple[str, str, float]] = []
        self._started: dict[tuple[str, str], float] = {}

    def install(self) -> None:
        """Listen to dynamo's compile callbacks, unless it does already.

        Called before every compiled call: ``torch._dynamo.reset()`` clears the callbacks.
        """
        handler = _callback_handler()
        if handler is None or self._start in handler.start_callbacks:
            return
        handler.register_start_callback(self._start)
        handler.register_end_callback(self._end)

    def _what(self, args: Any) -> str | None:
        return _COMPILE_KINDS.get(getattr(args.callback_trigger, "name", ""))

    def _start(self, args: Any) -> None:
        what = self._what(args)
        if what is not None:
            self._started[(what, str(args.compile_id))] = time.perf_counter()

    def _end(self, args: Any) -> None:
        what = self._what(args)
        started = self._started.pop((what, str(args.compile_id)), None) if what is not None else None
        if started is None:
            return
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.events.append((what, str(args.compile_id), seconds))
        log.info("memnet: torch.compile %s of graph %s took %.1f s (%.1f s compiling in this process so far)",
                 what, args.compile_id, seconds, self.seconds)


COMPILE_CLOCK = CompileClock()


@functools.cache
def _callback_handler() -> Any:
    """dynamo's compile-callback handler, or None in a torch without one."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:  # the backends' own times stay the only log
        return None
    return callback_handler


def compile_seconds() -> float:
    """Seconds this process has spent in ``torch.compile`` (``CompileClock``) since memnet first compiled."""
    return COMPILE_CLOCK.seconds


def compiled(owner: nn.Module, key: str, function: Callable, backend: str | Callable,
             *, fallback: str = "eager", mode: str | None = None) -> Callable:
    """``torch.compile`` of one of ``owner``'s step methods, ``function`` (a bound method of ``owner``).

    One compiled function per class, method, backend and mode serves every model (``_SHARED``):
    dynamo's guards decide whether a model can run a graph compiled for another one (same
    class, sizes, dtypes, mode), so models of the same sizes compile once per process, and
    no model is kept alive by the cache. Each graph compiled adds one to the calling model's
    ``compilations`` and is logged with its backend's time; ``COMPILE_CLOCK`` logs and sums the
    whole of each compilation (tracing, forward, and the backward compiled at the first
    backward). Where torch cannot compile (``compile_unavailable``), or the compiler fails
    during a call, the model logs why and runs ``function`` itself from then on (``fallback``
    names it in the log); a call that would need more than ``RECOMPILE_LIMIT`` variants of the
    function runs it uncompiled, logged once. ``mode`` is inductor's (``COMPILE_MODES``):
    ``reduce-overhead`` adds CUDA graphs.
    """
    method = function.__func__
    if function.__self__ is not owner:
        raise ValueError(f"compiled: {function!r} is not a method of the model it compiles for")
    functions = _COMPILED.setdefault(owner, {})
    cache_key = (type(owner), method, key, backend, mode)
    if cache_key not in functions:
        reason = compile_unavailable(backend)
        if reason is not None:
            log.warning("memnet: %s engine 'compiled' is unavailable (%s); running %s",
                        type(owner).__name__, reason, fallback)
            functions[cache_key] = method
        else:
            if cache_key not in _SHARED:
                _SHARED[cache_key] = _compile(method, f"{key} ({mode})" if mode is not None else key,
                                              backend, fallback, mode)
            functions[cache_key] = _SHARED[cache_key]
    return types.MethodType(functions[cache_key], owner)


def _compile(method: Callable, key: str, backend: str | Callable, fallback: str, mode: str | None) -> Callable:
    if mode is not None:
        # What torch.compile(mode=...) itself compiles with: inductor and the mode's options
        # (reduce-overhead: triton.cudagraphs), wrapped below like any other backend.
        backend = torch._TorchCompileInductorWrapper(check_compile_mode(mode, backend), None, None)
    elif isinstance(backend, str):
        from torch._dynamo import lookup_backend

        backend = lookup_backend(backend)

    def counting_backend(graph_module, example_inputs):
        owner = _OWNERS[-1]
        owner.compilations = getattr(owner, "compilations", 0) + 1
        shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)][:3]
        start = time.perf_counter()
        result = backend(graph_module, example_inputs)
        log.info(  # the backend's part; the tracing and the backward are in the CompileClock's lines
            "memnet: compiled %s %s, graph %d (inputs %s...): the backend took %.1f s",
            type(owner).__name__, key, owner.compilations, shapes, time.perf_counter() - start,
        )
        return result

    compiled_function = torch.compile(method, backend=counting_backend)

    from torch._dynamo import config as dynamo_config

    failed = False
    limit_logged = False  # a call past the recompile limit was logged

    def step(owner, *args):
        nonlocal failed, limit_logged
        if failed:  # the compiler failed before: the uncompiled method for every model
            return method(owner, *args)
        # allow_rnn: let dynamo read the weights of a controller's nn.LSTM / nn.GRU / nn.RNN (the
        # steps run their cells on those weights; no module's forward is traced). The recompile
        # limit: the shared function's own (``RECOMPILE_LIMIT``), raising where dynamo would fall
        # back in silence. Set and reset by hand: ``config.patch`` costs ~100 us a call, more
        # than a small step.
        saved = dynamo_config.allow_rnn, dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit
        dynamo_config.allow_rnn = True
        dynamo_config.recompile_limit = RECOMPILE_LIMIT
        dynamo_config.fail_on_recompile_limit_hit = True
        COMPILE_CLOCK.install()
        _OWNERS.append(owner)
        try:
            return compiled_function(owner, *args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            if not limit_logged:
                limit_logged = True
                log.warning("memnet: %s compiled %s: torch.compile's limit of %d graphs for this function is "
                            "reached; running %s for the sizes not compiled yet",
                            type(owner).__name__, key, dynamo_config.recompile_limit, fallback)
            return method(owner, *args)
        except (torch._dynamo.exc.TorchDynamoException, RuntimeError, OSError) as error:
            # A compiler failure must not end a training run. An error of the model itself
            # (a wrong input) raises again from the uncompiled method and leaves the compiled
            # function on; one the uncompiled method does not raise was the compiler's.
            result = method(owner, *args)
            log.warning("memnet: %s compiled %s failed (%s: %s); running %s from now on",
                        type(owner).__name__, key, type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "", fallback)
            failed = True
            return result
        finally:
            _OWNERS.pop()
            (dynamo_config.allow_rnn, dynamo_config.recompile_limit,
             dynamo_config.fail_on_recompile_limit_hit) = saved

    return step


def compile_unavailable(backend: str | Callable = "inductor") -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run here, or None when it can.

    Inductor on the CPU needs a C++ compiler; without one it fails at the first
    call, so this asks torch for its compiler before any training step.
    """
    if not isinstance(backend, str):
        return None
    try:
        from torch._dynamo import list_backends

        if backend not in list_backends(exclude_tags=()):
            return f"unknown torch.compile backend {backend!r}; known: {sorted(list_backends(exclude_tags=()))}"
        if backend == "inductor":
            from torch._inductor import cpp_builder

            cpp_builder.get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - any failure here means: do not compile
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None
