"""Encoder-decoder: teacher forcing, greedy decoding, attention, bad input, the Lightning module."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from memnet import addressing
from memnet.controllers import (
    EchoStateController,
    ElmanRNN,
    GRUController,
    JordanRNN,
    LSTMController,
)
from memnet.lightning import Seq2SeqModule, format_tokens, sequence_accuracy, token_metrics
from memnet.models.seq2seq import Seq2Seq

B, S, T, V = 3, 5, 4, 9
ATTENTIONS = ["none", "luong", "content", "bahdanau"]


def _model(attention="none", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("encoder", partial(LSTMController, hidden_size=6))
    kwargs.setdefault("decoder", partial(LSTMController, hidden_size=6))
    return Seq2Seq(V, V, embedding_size=7, attention=attention, attention_size=4, **kwargs).double()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, S), generator=g), torch.randint(3, V, (B, T), generator=g)


def _teacher_forced_loop(model, source, target):
    memory, context, state = model.encode(source)
    token = torch.full((B,), model.bos_index)
    # h(0): the encoder's last output when the decoder starts from the encoder's state, else zeros
    hidden = context if model.bridge else memory.new_zeros(B, model.decoder.output_size)
    logits = []
    for t in range(target.shape[1]):
        step_logits, state, hidden, _ = model.decode_step(token, state, hidden, memory, context)
        logits.append(step_logits)
        token = target[:, t]
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_ratio_one_equals_the_teacher_forced_loop(attention):
    model = _model(attention).train()
    source, target = _batch()
    logits, weights = model(source, target, teacher_forcing_ratio=1.0, return_attention=True)
    assert logits.shape == (B, T, V)
    torch.testing.assert_close(logits, _teacher_forced_loop(model, source, target))
    if attention == "none":
        assert weights is None
    else:
        assert weights.shape == (B, T, S)
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, T, dtype=torch.float64))


@pytest.mark.parametrize("attention", ["none", "bahdanau"])
def test_ratio_zero_feeds_back_the_arg_max_as_greedy_decoding_does(attention):
    model = _model(attention, max_decode_length=T).train()
    source, target = _batch(1)
    free = model(source, target, teacher_forcing_ratio=0.0)
    greedy = model._greedy(source, T)[1]  # logits of free-running decoding (no early stop: compare the common steps)
    steps = greedy.shape[1]
    torch.testing.assert_close(free[:, :steps], greedy)


def test_partial_teacher_forcing_is_seeded():
    model = _model("luong").train()
    source, target = _batch(2)
    run = lambda seed: model(source, target, teacher_forcing_ratio=0.5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4)) or not torch.allclose(run(3), run(5))


def test_resumed_training_repeats_the_teacher_forcing_coin_flips(tmp_path):
    """2 epochs, a checkpoint, 2 more end with the weights of 4 epochs straight: the coin flips' generator was
    not in the checkpoint, so the resumed run drew the seed's first flips again and its weights differed."""
    import pytorch_lightning as pl

    def module():
        torch.manual_seed(0)
        net = Seq2Seq(7, 7, embedding_size=3, encoder=partial(GRUController, hidden_size=4),
                      decoder=partial(GRUController, hidden_size=4), teacher_forcing_ratio=0.5)
        return Seq2SeqModule(net, seed=3)

    g = torch.Generator().manual_seed(0)
    batches = [{"source": torch.randint(3, 7, (5, 3), generator=g),
                "target": torch.cat([torch.randint(3, 7, (5, 2), generator=g), torch.full((5, 1), 2)], dim=1)}
               for _ in range(2)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path)

    straight = module()
    trainer(4).fit(straight, loader)
    first = trainer(2)
    first.fit(module(), loader)
    first.save_checkpoint(tmp_path / "half.ckpt")
    resumed = module()
    trainer(4).fit(resumed, loader, ckpt_path=tmp_path / "half.ckpt")
    for (name, value), resumed_value in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())


def test_evaluation_mode_scores_the_true_answer():
    model = _model("none", teacher_forcing_ratio=0.0).eval()
    source, target = _batch(3)
    torch.testing.assert_close(model(source, target), _teacher_forced_loop(model, source, target))


def test_content_attention_is_the_ntm_content_read():
    model = _model("content")
    memory = torch.randn(B, S, 6, dtype=torch.float64)
    queries = torch.randn(B, T, 6, dtype=torch.float64)
    expected = addressing.content_weights(
        memory, model.key(queries), torch.nn.functional.softplus(model.strength(queries)).squeeze(-1)
    )
    torch.testing.assert_close(model.attend(memory, queries), expected)


@pytest.mark.parametrize("bridge", [True, False], ids=["bridge", "no_bridge"])
def test_bahdanau_queries_step_t_with_the_decoder_state_before_it(bridge):
    """a(t) = softmax_s vᵀ tanh(W_q s(t−1) + W_k e(s) + b_k): s(0) is the encoder's last output C when the
    decoder starts from the encoder's state (``bridge``), zeros otherwise; s(t−1) the decoder's output after."""
    model = _model("bahdanau", bridge=bridge).train()
    source, target = _batch(6)
    _, weights = model(source, target, teacher_forcing_ratio=1.0, return_attention=True)
    memory, context, state = model.encode(source)
    w_q, w_k, b_k = model.query_projection.weight, model.key_projection.weight, model.key_projection.bias
    v = model.score_vector.weight[0]

    def by_hand(query):  # (B, C_d) -> (B, S), one score per source position
        scores = torch.stack([torch.tanh(query @ w_q.T + memory[:, s] @ w_k.T + b_k) @ v for s in range(S)], dim=1)
        return scores.softmax(dim=-1)

    first_query = context if bridge else torch.zeros(B, model.decoder.output_size, dtype=torch.float64)
    torch.testing.assert_close(weights[:, 0], by_hand(first_query))
    embedded = model.target_embedding(torch.full((B,), model.bos_index))
    read = (by_hand(first_query).unsqueeze(-1) * memory).sum(1)
    first_hidden, _ = model.decoder.step(torch.cat([embedded, read], dim=-1), state)
    torch.testing.assert_close(weights[:, 1], by_hand(first_hidden))


class _Scripted(Seq2Seq):
    """A decoder whose arg-max tokens follow a script: script[b][t] at step t (then EOS)."""

    def __init__(self, script, **kwargs):
        super().__init__(V, V, embedding_size=3, encoder=partial(GRUController, hidden_size=2),
                         decoder=partial(GRUController, hidden_size=2), **kwargs)
        self.script = script
        self.calls = 0

    def decode_step(self, prev_token, state, prev_hidden, memory, context):
        t = self.calls
        self.calls += 1
        tokens = torch.tensor([row[t] if t < len(row) else self.eos_index for row in self.script])
        logits = torch.nn.functional.one_hot(tokens, V).double()
        return logits, state, prev_hidden, None


def test_greedy_decoding_stops_at_the_end_marker_and_pads_after_it():
    model = _Scripted([[5, 2, 7, 7], [6, 6, 6, 2], [2, 8, 8, 8]], max_decode_length=10)
    tokens = model.generate(torch.randint(3, V, (3, 4)))
    assert model.calls == 4  # the last sequence emits EOS at step 4: decoding stops there
    assert tokens.tolist() == [[5, 2, 0, 0], [6, 6, 6, 2], [2, 0, 0, 0]]


def test_greedy_decoding_stops_at_its_limit_without_an_end_marker():
    model = _Scripted([[5] * 20] * 3, max_decode_length=6)
    tokens = model.generate(torch.randint(3, V, (3, 4)), max_length=4)
    assert tokens.shape == (3, 4) and model.calls == 4


@pytest.mark.parametrize(
    "encoder, decoder",
    [
        (partial(ElmanRNN, hidden_size=5), partial(ElmanRNN, hidden_size=5)),
        (partial(JordanRNN, hidden_size=5), partial(GRUController, hidden_size=4)),
        (partial(EchoStateController, reservoir_size=8), partial(LSTMController, hidden_size=4)),
    ],
)
def test_any_controller_can_encode_and_decode(encoder, decoder):
    bridge = encoder.func is decoder.func
    model = Seq2Seq(V, 6, encoder=encoder, decoder=decoder, attention="bahdanau", bridge=bridge, embedding_size=4)
    source, _ = _batch(4)
    target = torch.randint(3, 6, (B, T))
    assert model(source, target).shape == (B, T, 6)
    assert model.generate(source, max_length=5).shape[0] == B


def test_two_echo_state_reservoirs_of_one_seed_are_drawn_apart():
    # one seed drew one W for both: the decoder's reservoir (of the encoder's size) was a copy of the encoder's
    esn = partial(EchoStateController, reservoir_size=6, sparsity=0.5, bias_scaling=0.5, seed=4)
    model = Seq2Seq(V, V, encoder=esn, decoder=esn, embedding_size=3)
    encoder, decoder = model.encoder, model.decoder
    assert not torch.allclose(encoder.recurrent_weight, decoder.recurrent_weight, atol=0.05)
    assert decoder.seed != 4 and encoder.seed == 4
    # the decoder is drawn as a lone reservoir of its seed (radius scaled as asked), the encoder as before
    alone = EchoStateController(3 + 6, reservoir_size=6, sparsity=0.5, bias_scaling=0.5, seed=decoder.seed)
    torch.testing.assert_close(decoder.recurrent_weight, alone.recurrent_weight, rtol=0, atol=0)
    torch.testing.assert_close(decoder.input_weight, alone.input_weight, rtol=0, atol=0)
    torch.testing.assert_close(encoder.recurrent_weight[0], torch.tensor(
        [-0.044552, 0.450870, 0.0, 0.862517, 0.873174, 0.099840]), rtol=0, atol=1e-6)  # the lone draw of seed 4
    torch.testing.assert_close(encoder.input_weight[1], torch.tensor([-0.853883, 0.149061, 0.249400]), rtol=0, atol=1e-6)
    torch.testing.assert_close(encoder.bias[:3], torch.tensor([0.368073, 0.092571, 0.104894]), rtol=0, atol=1e-6)
    # another seed for the decoder is drawn from it, as given
    other = Seq2Seq(V, V, encoder=esn, decoder=partial(esn, seed=5), embedding_size=3)
    assert other.decoder.seed == 5
    # a checkpoint of a model trained with the copy loads its reservoirs as trained (buffers)
    state = model.state_dict()
    state["decoder.recurrent_weight"] = encoder.recurrent_weight.clone()
    model.load_state_dict(state)
    torch.testing.assert_close(model.decoder.recurrent_weight, model.encoder.recurrent_weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Seq2Seq(V, V, teacher_forcing_ratio=1.5), r"teacher_forcing_ratio must lie in \[0.0, 1.0\], got 1.5"),
        (lambda: Seq2Seq(V, V, teacher_forcing_ratio=-0.1), r"teacher_forcing_ratio must lie in \[0.0, 1.0\]"),
        (lambda: Seq2Seq(V, V, attention="dot"), "attention must be one of"),
        (lambda: Seq2Seq(V, V, max_decode_length=0), "max_decode_length must be a positive integer"),
        (lambda: Seq2Seq(V, 2), r"eos_index must lie in \[0, output_size=2\)"),
        # PAD targets are not scored: with EOS = PAD the end marker was never learned, silently
        (lambda: Seq2Seq(V, V, pad_index=2, eos_index=2), "pad_index and eos_index must differ"),
        (lambda: Seq2Seq(V, V, encoder=partial(GRUController, hidden_size=3)), "bridge=True"),
        # the first Bahdanau query is the encoder's last output: its width must be the decoder's
        (lambda: Seq2Seq(V, V, encoder=partial(EchoStateController, reservoir_size=4, sparsity=0.0, include_input=True),
                         decoder=partial(EchoStateController, reservoir_size=4, sparsity=0.0, include_input=True),
                         attention="bahdanau"),
         r"bridge=True with bahdanau attention .* \(C_e = 36 wide\), but the decoder's queries are C_d = 72 wide"),
        (lambda: _model().generate(_batch()[0], max_length=101),
         r"max_length must lie in \[1, max_decode_length=100\], got 101"),
        (lambda: _model(max_decode_length=3)(*_batch()), r"target length T must lie in \[1, max_decode_length=3\], got 4"),
        (lambda: _model()(*_batch(), teacher_forcing_ratio=2.0), r"teacher_forcing_ratio must lie in \[0.0, 1.0\]"),
        (lambda: _model()(_batch()[0].index_fill(1, torch.tensor([4]), 0), _batch()[1]),
         r"source holds PAD \(id 0\) at sequence 0, step 4: .* must share one length"),
        (lambda: _model(attention="luong").generate(_batch()[0].index_fill(1, torch.tensor([2]), 0)),
         "source holds PAD"),
        # an id ≥ the vocabulary was a raw IndexError from the embedding (or, on a GPU, a device assert)
        (lambda: _model()(_batch()[0].index_fill(1, torch.tensor([1]), V), _batch()[1]),
         (rf"Seq2Seq: source holds token id {V} \(ids from 3 to {V}\), but the vocabulary has {V} ids, 0 to {V - 1} "
         rf"\(input_size={V}\); input_size must count every token of the data")),
        (lambda: _model().train()(_batch()[0], _batch()[1].index_fill(1, torch.tensor([3]), V + 2),
                                  teacher_forcing_ratio=0.5),
         rf"Seq2Seq: target holds token id {V + 2} .* \(output_size={V}\)"),
        (lambda: _model().generate(_batch()[0].index_fill(1, torch.tensor([0]), -1)), "source holds token id -1"),
    ],
)
def test_bad_input_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


TINY_REVERSE = """
trainer: {max_steps: 2, logger: false, enable_progress_bar: false, enable_model_summary: false, limit_val_batches: 1,
          default_root_dir: run}
model:
  class_path: memnet.lightning.Seq2SeqModule
  init_args:
    net:
      class_path: memnet.models.seq2seq.Seq2Seq
      init_args:
        embedding_size: 4
        max_decode_length: 8
        encoder: {class_path: memnet.controllers.LSTMController, init_args: {hidden_size: 4}}
        decoder: {class_path: memnet.controllers.LSTMController, init_args: {hidden_size: 4}}
data:
  class_path: tasks.algorithmic.AlgorithmicDataModule
  init_args:
    task: {class_path: tasks.sequences.ReverseTask, init_args: {num_symbols: 4, min_length: 1, max_length: 5}}
    batch_size: 3
    batches_per_epoch: 2
    val_lengths: [5]
    val_size: 3
    test_lengths: [5, 10]
    test_size: 3
"""


@pytest.mark.parametrize("subcommand, override, option, length, steps", [
    ("fit", [], "data.init_args.test_lengths", 10, 11),
    ("fit", ["--data.init_args.task.init_args.max_length=9", "--data.init_args.test_lengths=[5]"],
     "data.init_args.task.init_args.max_length", 9, 10),
    ("validate", ["--data.init_args.val_lengths=[8]", "--ckpt_path=untrained"], "data.init_args.val_lengths", 8, 9),
    ("test", ["--ckpt_path=untrained"], "data.init_args.test_lengths", 10, 11),
])
def test_a_target_longer_than_max_decode_length_is_refused_before_anything_runs(
        tmp_path, monkeypatch, capsys, subcommand, override, option, length, steps):
    """test_lengths [5, 10] with max_decode_length 8 (targets of 11 tokens at length 10): memnet fit trained to the
    end (exit 0), and memnet test of its checkpoint stopped at its first test batch ("target length T must lie in
    [1, max_decode_length=8], got 11"), naming neither test_lengths nor the option to raise."""
    from memnet.cli import main as memnet_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_REVERSE)
    with pytest.raises(SystemExit) as exit_status:
        memnet_main([subcommand, "--config", "tiny.yaml", *override])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"memnet: {option}: length {length} gives targets of {steps} tokens (EOS included), more than the decoder's "
        f"max_decode_length 8; raise model.init_args.net.init_args.max_decode_length to ≥ {steps} or drop length "
        f"{length}")
    assert not list(tmp_path.glob("**/*.ckpt"))  # refused before training


def test_metrics_ignore_padding_and_require_exact_sequences():
    logits = torch.full((2, 3, 5), -5.0)
    target = torch.tensor([[3, 4, 2], [3, 2, 0]])
    logits[0, 0, 3] = logits[0, 1, 4] = logits[0, 2, 2] = 5.0  # sequence 0 right
    logits[1, 0, 4] = logits[1, 1, 2] = 5.0  # sequence 1: first token wrong
    metrics = token_metrics(logits, target, pad_index=0)
    assert metrics["token_accuracy"].item() == pytest.approx(4 / 5)
    decoded = torch.tensor([[3, 4, 2], [3, 2, 0]])
    assert sequence_accuracy(decoded, target).tolist() == [1.0, 1.0]
    assert sequence_accuracy(torch.tensor([[3, 4], [3, 2]]), target).tolist() == [0.0, 1.0]  # 0 stopped early
    assert sequence_accuracy(torch.tensor([[3, 4, 2, 5], [3, 2, 0, 0]]), target).tolist() == [0.0, 1.0]
    assert format_tokens(torch.tensor([1, 4, 2, 0, 0]), {0: "<pad>", 1: "<bos>", 2: "<eos>"}) == "<bos> 4 <eos>"


def test_predict_prints_decodings(capsys):
    net = Seq2Seq(6, 6, embedding_size=4, encoder=partial(GRUController, hidden_size=5),
                  decoder=partial(GRUController, hidden_size=5), max_decode_length=6)
    module = Seq2SeqModule(net, print_predictions=3).eval()
    source = torch.tensor([[3, 4, 5], [5, 5, 3]])
    target = torch.tensor([[5, 4, 3, 2], [3, 5, 5, 2]])
    for batch_idx in range(2):  # two batches of two: three lines in all
        outputs = module.predict_step({"source": source, "target": target}, batch_idx)
        assert outputs["prediction"].shape[0] == 2 and outputs["correct"].shape == (2,)
        if batch_idx == 0:
            module.on_predict_epoch_start()
        module.on_predict_batch_end(outputs, None, batch_idx)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("source: 3 4 5 | target: 5 4 3 <eos> | decoded: ")
    assert lines[0].endswith(("✓", "✗"))


@pytest.mark.slow
def test_module_learns_to_reverse_and_predict_prints_decodings(capsys):
    torch.manual_seed(0)
    net = Seq2Seq(6, 6, embedding_size=8, attention="luong", encoder=partial(GRUController, hidden_size=24),
                  decoder=partial(GRUController, hidden_size=24), max_decode_length=8)
    module = Seq2SeqModule(net, optimizer=partial(torch.optim.Adam, lr=0.02), print_predictions=2)
    optimizer = module.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        source = torch.randint(3, 6, (16, 3), generator=g)
        target = torch.cat([source.flip(1), torch.full((16, 1), 2)], dim=1)
        loss = token_metrics(module(source, target), target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source = torch.randint(3, 6, (8, 3), generator=g)
    target = torch.cat([source.flip(1), torch.full((8, 1), 2)], dim=1)
    module.eval()
    outputs = module.predict_step({"source": source, "target": target}, 0)
    assert outputs["correct"].mean() >= 0.75
    module.on_predict_epoch_start()
    module.on_predict_batch_end(outputs, None, 0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("source: ") and "decoded: " in lines[0] and "<eos>" in lines[0]
