"""MemN2N: position encoding, hops against a loop over the paper's equations, tying schemes,
linear start, random noise, padding, bad input; and the slow check that it learns bAbI task 1."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from memnet.callbacks import LinearStartSwitch
from memnet.models.memn2n import (
    PAD_ID,
    MemN2N,
    authors_position_encoding,
    position_encoding,
    random_noise_blanks,
)
from memnet.utils import SeededDraws

B, N, J, JQ, D, V, A = 3, 7, 5, 4, 6, 23, 9  # all different, so a swapped axis cannot pass


def _tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: stories of 7, 4 and 2 sentences, sentences of varying length."""
    generator = torch.Generator().manual_seed(seed)
    story = torch.randint(1, V, (B, N, J), generator=generator)
    lengths = torch.randint(1, J + 1, (B, N), generator=generator)
    story = story.masked_fill(torch.arange(J) >= lengths[..., None], PAD_ID)
    for b, sentences in enumerate((7, 4, 2)):
        story[b, sentences:] = PAD_ID
    query = torch.randint(1, V, (B, JQ), generator=generator)
    query[0, 2:] = PAD_ID
    return story, query


def _model(**kwargs) -> MemN2N:
    torch.manual_seed(0)
    options = {"embedding_size": D, "hops": 3, "memory_size": 10, "random_noise": 0.0, "answer_offset": 4}
    options.update(kwargs)
    return MemN2N(V, A, **options).double().eval()


def test_position_encoding_matches_the_paper():
    sentence, dims = 7, 5
    encoding = position_encoding(sentence, dims, dtype=torch.float64)
    assert encoding.shape == (sentence, dims)
    for j in range(1, sentence + 1):
        for k in range(1, dims + 1):
            expected = (1 - j / sentence) - (k / dims) * (1 - 2 * j / sentence)
            assert encoding[j - 1, k - 1].item() == pytest.approx(expected, abs=1e-12)


def _reference(model: MemN2N, story: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The paper's equations (or the authors' code's, per option), one story, sentence and hop at a time."""
    outputs = []
    authors = model.position_scale == "authors"
    for b in range(story.shape[0]):
        def encode(words, weight):
            words = [w for w in words.tolist() if w != PAD_ID]
            if model.encoding == "bow":
                return sum(weight[w] for w in words)
            if authors:
                pe = authors_position_encoding(model.sentence_length, model.embedding_size, dtype=weight.dtype)
            else:
                pe = position_encoding(len(words), model.embedding_size, dtype=weight.dtype)
            return sum(pe[j] * weight[w] for j, w in enumerate(words))

        time_scale = (authors_position_encoding(model.sentence_length, model.embedding_size,
                                                dtype=torch.float64)[-1] if authors else 1.0)
        sentences = [s for s in story[b] if (s != PAD_ID).any()]
        u = encode(query[b], model.query_embedding().weight)
        for hop in range(1, model.hops + 1):
            memory, output = [], []
            for i, sentence in enumerate(sentences):
                m = encode(sentence, model.input_embedding(hop).weight)
                c = encode(sentence, model.output_embedding(hop).weight)
                if model.temporal:
                    m = m + model.input_temporal(hop).weight[i] * time_scale
                    c = c + model.output_temporal(hop).weight[i] * time_scale
                memory.append(m)
                output.append(c)
            scores = torch.stack([u @ m for m in memory])
            if model.empty_memory == "nil":  # nil sentences: score 0, output 0, in the softmax
                scores = torch.cat([scores, scores.new_zeros(model.memory_size - len(sentences))])
                output += [torch.zeros_like(output[0])] * (model.memory_size - len(sentences))
            p = scores.softmax(0) if bool(model.softmax_enabled) else scores
            o = sum(p_i * c for p_i, c in zip(p, output))
            u = (model.linear_map(u) if model.tying == "layerwise" else u) + o
        if model.answer_layer == "vocabulary":  # every word of C^K and every time row, answers first
            words = model.output_embedding(model.hops).weight.clone()
            words[PAD_ID] = 0
            logits = torch.cat([words @ u, model.output_temporal(model.hops).weight @ u if model.temporal
                                else u.new_zeros(0)])
            first = torch.arange(4, 4 + model.output_size)
            rest = torch.tensor([i for i in range(len(logits)) if not 4 <= i < 4 + model.output_size])
            outputs.append(logits[torch.cat([first, rest])])
        else:
            outputs.append(model.answer_weight() @ u)
    return torch.stack(outputs)


@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
@pytest.mark.parametrize("encoding", ["bow", "position"])
@pytest.mark.parametrize("temporal", [True, False])
@pytest.mark.parametrize("linear_start", [False, True])
def test_forward_equals_the_papers_equations(tying, encoding, temporal, linear_start):
    model = _model(tying=tying, encoding=encoding, temporal=temporal, linear_start=linear_start)
    story, query = _tokens()
    logits, attention = model(story, query, return_attention=True)
    assert logits.shape == (B, A) and attention.shape == (B, 3, N)
    torch.testing.assert_close(logits, _reference(model, story, query))


@pytest.mark.parametrize("temporal", [True, False])
@pytest.mark.parametrize("linear_start", [False, True])
@pytest.mark.parametrize("options", [
    {"position_scale": "authors", "sentence_length": J + 2},
    {"empty_memory": "nil"},
    {"answer_layer": "vocabulary"},
    {"position_scale": "authors", "sentence_length": J + 1, "empty_memory": "nil", "answer_layer": "vocabulary"},
], ids=["authors_pe", "nil_memory", "vocabulary_answer", "all_three"])
def test_forward_equals_the_authors_equations(options, temporal, linear_start):
    model = _model(temporal=temporal, linear_start=linear_start, **options)
    story, query = _tokens()
    logits, attention = model(story, query, return_attention=True)
    assert logits.shape == (B, model.logits_size)
    assert attention.shape == (B, 3, 10 if model.empty_memory == "nil" else N)
    torch.testing.assert_close(logits, _reference(model, story, query))


def test_authors_position_encoding_by_hand():
    """J = 3, d = 2: l_kj = 1 + 4(k − 1.5)(j − 2)/6."""
    expected = torch.tensor([[4 / 3, 2 / 3], [1.0, 1.0], [2 / 3, 4 / 3]], dtype=torch.float64)
    torch.testing.assert_close(authors_position_encoding(3, 2, dtype=torch.float64), expected)
    # the model applies it with one J to every sentence: a 1-word and a 2-word sentence, d = 2, J = 3
    model = MemN2N(5, 1, embedding_size=2, hops=1, memory_size=2, temporal=False, random_noise=0.0,
                   position_scale="authors", sentence_length=3, answer_offset=4).double()
    with torch.no_grad():
        model.embeddings[0].weight.copy_(torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0]]))
    memory = model._encode(torch.tensor([[1, 0], [2, 3]]), model._word_weights(torch.tensor([[1, 0], [2, 3]]),
                                                                                   torch.float64),
                           model.embeddings[0])
    torch.testing.assert_close(memory, torch.tensor([[4 / 3, 0.0], [1.0, 2 / 3 + 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="a sentence or question of 3 words does not fit sentence_length 3"):
        model(torch.tensor([[[1, 2, 3]]]), torch.tensor([[1]]))


def test_nil_memory_is_a_softmax_sink_by_hand():
    """One sentence scoring 2 among 4 slots: p = e²/(e² + 3) for it, 1/(e² + 3) for each nil slot."""
    def model_with(empty_memory):
        model = MemN2N(6, 1, embedding_size=2, hops=1, memory_size=4, encoding="bow", temporal=False,
                       random_noise=0.0, empty_memory=empty_memory, answer_offset=5).double()
        with torch.no_grad():
            model.embeddings[0].weight.copy_(torch.tensor([[0, 0], [1, 0], [2, 0], [0, 0], [0, 0], [0, 0]]))
        return model

    story, query = torch.tensor([[[2]]]), torch.tensor([[1]])  # m = (2, 0), u = (1, 0): score 2
    _, attention = model_with("nil")(story, query, return_attention=True)
    e2 = math.exp(2)
    expected = torch.tensor([[[e2 / (e2 + 3), 1 / (e2 + 3), 1 / (e2 + 3), 1 / (e2 + 3)]]], dtype=torch.float64)
    torch.testing.assert_close(attention, expected)
    _, masked = model_with("masked")(story, query, return_attention=True)
    torch.testing.assert_close(masked, torch.ones(1, 1, 1, dtype=torch.float64))


def test_vocabulary_answer_layer_puts_answers_first_and_keeps_nil_at_zero():
    model = _model(answer_layer="vocabulary").train()
    story, query = _tokens()
    logits = model(story, query)
    assert logits.shape == (B, V + 10)
    nil_column = A + PAD_ID  # the specials follow the answers; the nil word is the first of them
    assert (logits[:, nil_column] == 0).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 8])).backward()
    optimizer.step()
    assert (model.output_embedding(3).weight[PAD_ID] == 0).all()  # the tied answer layer leaves nil at 0
    with pytest.raises(ValueError, match="answer_layer 'vocabulary' ties W to C\\^K and needs tying 'adjacent'"):
        MemN2N(V, A, tying="layerwise", answer_layer="vocabulary")


def test_clip_groups_cover_every_parameter_once():
    for tying in ("adjacent", "layerwise"):
        model = _model(tying=tying)
        grouped = [id(p) for group in model.clip_groups() for p in group]
        assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    # an embedding and its time rows are one matrix, as in the authors' lookup tables
    assert [len(group) for group in _model().clip_groups()] == [2, 2, 2, 2]


def test_hop_count_and_attention():
    model = _model(hops=2)
    story, query = _tokens()
    _, attention = model(story, query, return_attention=True)
    assert attention.shape == (B, 2, N)
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, 2, dtype=torch.float64))
    assert (attention[1, :, 4:] == 0).all() and (attention[2, :, 2:] == 0).all()  # empty slots


def test_padding_does_not_change_the_answer():
    model = _model()
    story, query = _tokens()
    wider = torch.cat([story, torch.zeros(B, N, 2, dtype=story.dtype)], dim=-1)
    longer = torch.cat([wider, torch.zeros(B, 3, J + 2, dtype=story.dtype)], dim=1)
    padded_query = torch.cat([query, torch.zeros(B, 3, dtype=query.dtype)], dim=-1)
    torch.testing.assert_close(model(longer, padded_query), model(story, query))


def test_batch_equals_single_stories():
    model = _model()
    story, query = _tokens()
    batched = model(story, query)
    for b in range(B):
        torch.testing.assert_close(batched[b:b + 1], model(story[b:b + 1], query[b:b + 1]))


def test_adjacent_tying_shares_exactly_the_papers_matrices():
    model = _model(tying="adjacent", hops=3)
    for hop in (1, 2):
        assert model.input_embedding(hop + 1) is model.output_embedding(hop)  # A^{k+1} = C^k
        assert model.input_temporal(hop + 1) is model.output_temporal(hop)
    assert model.query_embedding() is model.input_embedding(1)  # B = A^1
    assert model.output_embedding(1) is not model.input_embedding(1)
    weight = model.answer_weight()  # Wᵀ = C^K (its answer rows)
    assert weight.data_ptr() == model.output_embedding(3).weight[4].data_ptr()
    assert len(model.embeddings) == 4 and len(model.temporal_embeddings) == 4
    names = {name for name, _ in model.named_parameters()}
    assert names == {f"embeddings.{i}.weight" for i in range(4)} | {f"temporal_embeddings.{i}.weight" for i in range(4)}
    # a gradient of the answer weights lands in C^K
    story, query = _tokens()
    model(story, query)[:, 0].sum().backward()
    assert model.output_embedding(3).weight.grad[4].abs().sum() > 0


def test_layerwise_tying_shares_across_hops_and_adds_h():
    model = _model(tying="layerwise", hops=3)
    assert model.input_embedding(1) is model.input_embedding(2) is model.input_embedding(3)
    assert model.output_embedding(1) is model.output_embedding(2) is model.output_embedding(3)
    assert model.input_temporal(1) is model.input_temporal(3)
    assert model.input_embedding(1) is not model.output_embedding(1)
    assert model.query_embedding() is not model.input_embedding(1)
    assert model.linear_map.weight.shape == (D, D) and model.answer.weight.shape == (A, D)
    names = {name for name, _ in model.named_parameters()}
    assert names == {"embeddings.0.weight", "embeddings.1.weight", "temporal_embeddings.0.weight",
                     "temporal_embeddings.1.weight", "query_embedding_layer.weight", "linear_map.weight",
                     "answer.weight"}
    # H matters: a different H gives a different answer
    story, query = _tokens()
    before = model(story, query)
    with torch.no_grad():
        model.linear_map.weight.mul_(2)
    assert not torch.allclose(before, model(story, query))


def test_padding_rows_stay_zero_after_a_step():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    story, query = _tokens()
    model.train()
    model(story, query).sum().backward()
    optimizer.step()
    for embedding in model.embeddings:
        assert (embedding.weight[PAD_ID] == 0).all()


def test_linear_start_then_softmax():
    model = _model(linear_start=True)
    story, query = _tokens()
    _, attention = model(story, query, return_attention=True)
    assert not torch.allclose(attention.sum(-1), torch.ones(B, 3, dtype=torch.float64))  # raw scores
    model.enable_softmax()
    _, attention = model(story, query, return_attention=True)
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, 3, dtype=torch.float64))
    assert model.state_dict()["softmax_enabled"].item() is True  # a checkpoint remembers the switch


def test_linear_start_switch_callback_turns_softmax_on_when_val_loss_stops_falling():
    model = _model(linear_start=True)
    module = SimpleNamespace(net=model, log=lambda *args, **kwargs: None)
    switch = LinearStartSwitch(patience=1)
    for epoch, loss in enumerate([5.0, 4.0, 3.5]):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics={"val/loss": loss})
        switch.on_validation_end(trainer, module)
        assert not bool(model.softmax_enabled)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=3, callback_metrics={"val/loss": 3.6})
    switch.on_validation_end(trainer, module)
    assert bool(model.softmax_enabled) and switch.switched_at == 3
    for bad in (0, True, 1.5):  # True and 1.5 are no count of epochs (True counted as 1)
        with pytest.raises(ValueError, match="patience must be a positive integer"):
            LinearStartSwitch(patience=bad)
        with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
            LinearStartSwitch(max_epochs=bad)


def test_linear_start_switch_max_epochs_and_other_models():
    model = _model(linear_start=True)
    module = SimpleNamespace(net=model, log=lambda *args, **kwargs: None)
    switch = LinearStartSwitch(patience=5, max_epochs=2)
    for epoch, loss in enumerate([5.0, 4.0]):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics={"val/loss": loss})
        switch.on_validation_end(trainer, module)
        assert not bool(model.softmax_enabled)  # the cap counts epochs: at an epoch's end, not at its validation
        switch.on_train_epoch_end(trainer, module)
    assert bool(model.softmax_enabled) and switch.switched_at == 1
    plain = SimpleNamespace(net=torch.nn.Linear(2, 2))  # no softmax flag: nothing happens
    switch.on_validation_end(SimpleNamespace(sanity_checking=False, current_epoch=0, callback_metrics={}), plain)


def test_linear_start_switch_fixed_length_ignores_the_monitor():
    model = _model(linear_start=True)
    module = SimpleNamespace(net=model, log=lambda *args, **kwargs: None)
    switch = LinearStartSwitch(epochs=3)
    for epoch, loss in enumerate([5.0, 6.0, 7.0]):  # val loss rising: the paper-text switch would fire
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics={"val/loss": loss})
        switch.on_train_epoch_start(trainer, module)
        switch.on_validation_end(trainer, module)
        assert not bool(model.softmax_enabled)
    switch.on_train_epoch_start(SimpleNamespace(sanity_checking=False, current_epoch=3, callback_metrics={}), module)
    assert bool(model.softmax_enabled) and switch.switched_at == 2
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        LinearStartSwitch(epochs=0)


@pytest.mark.parametrize(("trainer_args", "switch", "losses", "softmax_from", "switched_at"), [
    # two validations an epoch: patience counts them, the switch comes in the middle of epoch 1 (after step 6)
    ({"val_check_interval": 0.5}, {"patience": 1}, [5.0, 4.0, 4.1, 4.2, 4.3, 4.4], 6, 1),
    # ... and the cap counts epochs: the end of epoch 0 (step 4), not its first validation (step 2)
    ({"val_check_interval": 0.5}, {"patience": 100, "max_epochs": 1}, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 4, 0),
    # one validation every second epoch: the cap still ends the phase after one epoch, not at epoch 1's validation
    ({"check_val_every_n_epoch": 2}, {"patience": 100, "max_epochs": 1}, [5.0, 4.0], 4, 0),
], ids=["patience-in-validations", "cap-in-epochs", "cap-without-a-validation"])
def test_linear_start_switch_counts_patience_in_validations_and_its_cap_in_epochs(trainer_args, switch, losses,
                                                                                   softmax_from, switched_at, tmp_path):
    import pytorch_lightning as pl

    from memnet.callbacks import LastAndBestCheckpoint

    class Scripted(pl.LightningModule):  # a linear-start MemN2N as ``net``; its validation loss scripted
        def __init__(self):
            super().__init__()
            self.net = MemN2N(20, 6, embedding_size=5, memory_size=6, linear_start=True, seed=0)
            self.layer = torch.nn.Linear(2, 1)
            self.validations = 0
            self.softmax_on = []  # at each training step

        def training_step(self, batch, batch_idx):
            self.softmax_on.append(bool(self.net.softmax_enabled))
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", losses[self.validations])

        def on_validation_epoch_end(self):
            self.validations += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.01)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["validations"] = self.validations

        def on_load_checkpoint(self, checkpoint):
            self.validations = checkpoint["validations"]

    def fit(max_steps, ckpt_path=None):
        data = torch.utils.data.TensorDataset(torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
        callback, module = LinearStartSwitch(**switch), Scripted()
        last = LastAndBestCheckpoint(dirpath=tmp_path / f"to-{max_steps}", save_last=True)
        trainer = pl.Trainer(max_steps=max_steps, callbacks=[callback, last], logger=False, enable_progress_bar=False,
                             num_sanity_val_steps=0, enable_model_summary=False, **trainer_args)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1),
                    torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
        return module.softmax_on, callback.switched_at

    assert fit(12) == ([False] * softmax_from + [True] * (12 - softmax_from), switched_at)
    # stopped at the end of epoch 0 (its last.ckpt written at its last validation, before the cap's epoch end) and
    # resumed: the switch comes where it came in the unbroken run
    stopped = fit(4)
    resumed = fit(12, ckpt_path=tmp_path / "to-4" / "last.ckpt")
    assert stopped[0] + resumed[0] == [False] * softmax_from + [True] * (12 - softmax_from)
    assert resumed[1] == switched_at


@pytest.mark.parametrize("switch", [
    {"monitor": "val/loss", "patience": 1, "max_epochs": 1},  # the paper-text recipes': at the end of the epoch
    {"epochs": 1},  # the authors' recipe: at the start of a training epoch
], ids=["monitored", "fixed"])
def test_linear_start_switch_in_a_real_trainer_switches_and_logs(switch, tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from memnet.lightning import QAModule

    torch.manual_seed(0)
    items = [{"story": torch.randint(1, 20, (3, 4)), "query": torch.randint(1, 20, (3,)), "answer": torch.tensor(i % 6),
              "task": torch.tensor(1)} for i in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2,
                                         collate_fn=lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]})
    net = MemN2N(20, 6, embedding_size=5, memory_size=6, linear_start=True, seed=0)
    callback = LinearStartSwitch(**switch)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(QAModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=1e-3)), loader, loader)
    assert callback.switched_at == 0 and bool(net.softmax_enabled)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "linear_start/switched" in logged.splitlines()[0]


def test_linear_start_switch_refuses_a_scheduler_of_another_length():
    from memnet.optim import LinearStartStepLR

    optimizer = torch.optim.SGD(_model().parameters(), lr=0.01)
    scheduler = LinearStartStepLR(optimizer, linear_start_epochs=20, linear_start_lr=0.005, step_size=25)
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    LinearStartSwitch(epochs=20).on_train_start(trainer, None)  # agree: nothing happens
    with pytest.raises(ValueError, match="LinearStartSwitch epochs is 30 but the scheduler's linear_start_epochs is 20"):
        LinearStartSwitch(epochs=30).on_train_start(trainer, None)


def test_linear_start_switch_by_the_monitor_refuses_a_scheduler_with_a_linear_start():
    """A switch ended by val/loss (the paper's text) beside the authors' schedule of 20 linear epochs: the softmax came
    back when the loss stopped falling and the rate restarted at epoch 20 all the same, and its halvings came 25
    epochs after that, not after the switch; the run trained neither recipe and exited 0."""
    from memnet.optim import LinearStartStepLR

    linear = _model(linear_start=True)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.01)
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=LinearStartStepLR(
        optimizer, linear_start_epochs=20, linear_start_lr=0.005, step_size=25))])
    with pytest.raises(ValueError, match="stops falling .* linear_start_epochs is 20: the learning rate would restart"):
        LinearStartSwitch(patience=1).on_train_start(trainer, SimpleNamespace(net=linear))
    LinearStartSwitch(patience=1).on_train_start(trainer, SimpleNamespace(net=_model()))  # no linear start: a schedule
    trainer.lr_scheduler_configs[0].scheduler = LinearStartStepLR(optimizer, linear_start_epochs=0,
                                                                  linear_start_lr=0.005, step_size=25)
    LinearStartSwitch(patience=1).on_train_start(trainer, SimpleNamespace(net=linear))  # the suites' ablation


def test_random_noise_time_indices():
    model = MemN2N(V, A, embedding_size=D, memory_size=12, random_noise=0.3, seed=5)
    present = torch.zeros(B, N, dtype=torch.bool)
    for b, sentences in enumerate((7, 4, 2)):
        present[b, :sentences] = True
    model.eval()
    assert torch.equal(model.time_indices(present), torch.arange(N).expand(B, N))
    model.train()
    first = model.time_indices(present, torch.Generator().manual_seed(1))
    again = model.time_indices(present, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)  # seeded
    for b, sentences in enumerate((7, 4, 2)):
        used = first[b, :sentences]
        assert (used[1:] > used[:-1]).all()  # order kept
        assert (used >= torch.arange(sentences)).all()  # only gaps are added
        assert int(used[-1]) <= sentences - 1 + -(-3 * sentences // 10)  # at most ⌈0.3·S⌉ empty memories
    draws = torch.stack([model.time_indices(present, torch.Generator().manual_seed(s)) for s in range(50)])
    assert (draws != torch.arange(N)).any()  # gaps do occur
    no_noise = MemN2N(V, A, embedding_size=D, memory_size=12, random_noise=0.0).train()
    assert torch.equal(no_noise.time_indices(present), torch.arange(N).expand(B, N))


@pytest.mark.parametrize("random_noise, sentences, blanks", [
    (0.3, 50, 15), (0.6, 25, 15), (0.07, 100, 8), (0.55, 100, 56),  # float32 rounds these across an integer
    (0.1, 50, 5),  # the paper's value: float32 and double agree
])
def test_random_noise_inserts_at_most_the_authors_double_precision_ceil_of_blanks(random_noise, sentences, blanks):
    """⌈r·S⌉ as the authors' MATLAB ``ceil(size(d,2) * randomize_time)`` computes it, in doubles."""
    assert blanks == math.ceil(sentences * random_noise)
    lengths = torch.tensor([sentences, 1, 0])
    assert torch.equal(random_noise_blanks(random_noise, lengths), torch.tensor([blanks, 1, 0]))
    model = MemN2N(V, A, embedding_size=D, memory_size=sentences + blanks + 3, random_noise=random_noise).train()
    rows = model.time_indices(torch.ones(2000, sentences, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert int(rows.max()) == sentences + blanks - 1  # the last row of S + E, E up to ⌈r·S⌉ and no further


@pytest.mark.parametrize("sentences, random_noise, memory_size", [(3, 0.5, 12), (4, 0.5, 5)])
def test_random_noise_rows_follow_the_authors_distribution(sentences, random_noise, memory_size):
    """The authors' MATLAB draws ``nblank = randi([0, ceil(S·r)])``, then the first S of
    ``randperm(S + nblank)``, sorted, clipped to the memory size: the exact distribution of the
    rows, enumerated, against 20,000 of memnet's draws (the second case clips)."""
    from collections import Counter
    from fractions import Fraction
    from itertools import permutations

    most = math.ceil(sentences * random_noise)
    exact: Counter = Counter()
    for nblank in range(most + 1):
        orders = list(permutations(range(sentences + nblank)))
        for order in orders:
            rows = tuple(min(r, memory_size - 1) for r in sorted(order[:sentences]))
            exact[rows] += Fraction(1, (most + 1) * len(orders))
    model = MemN2N(V, A, embedding_size=D, memory_size=memory_size, random_noise=random_noise).train()
    draws = 20_000
    rows = model.time_indices(torch.ones(draws, sentences, dtype=torch.bool), torch.Generator().manual_seed(0))
    seen = Counter(tuple(r) for r in rows.tolist())
    assert set(seen) <= set(exact)
    for key, p in exact.items():  # each frequency within 5 standard deviations of the exact probability
        assert abs(seen[key] / draws - float(p)) < 5 * math.sqrt(float(p) * (1 - float(p)) / draws), key


def test_random_noise_draws_with_a_cpu_generator_of_the_seed_on_any_device(monkeypatch):
    """The rows come from the seed's CPU generator and are moved to the story's device, so a seed
    draws the same rows on a CPU and on a GPU (tests/test_gpu.py compares the two devices)."""
    model = MemN2N(V, A, embedding_size=D, memory_size=12, random_noise=0.3, seed=5).train()
    devices = []
    make = SeededDraws.generator

    def generator(self, device):
        devices.append(torch.device(device).type)
        return make(self, device)

    monkeypatch.setattr(SeededDraws, "generator", generator)
    story, query = _tokens()
    present = (story != PAD_ID).any(-1)
    drawn = []
    draw = MemN2N.time_indices
    monkeypatch.setattr(MemN2N, "time_indices", lambda self, *args: drawn.append(draw(self, *args)) or drawn[-1])
    model(story, query)
    model(story, query)
    assert devices == ["cpu", "cpu"] and model.rng_state()["device"] == "cpu"
    seeded = torch.Generator().manual_seed(5)
    assert all(torch.equal(rows, draw(model, present, seeded)) for rows in drawn)
    assert not torch.equal(drawn[0], drawn[1])  # one generator, drawn on: not the seed's first rows again


def test_random_noise_changes_training_not_evaluation():
    model = _model(random_noise=0.5, seed=3)
    story, query = _tokens()
    evaluation = model(story, query)
    model.train()
    outputs = [model(story, query) for _ in range(5)]
    assert any(not torch.allclose(out, evaluation) for out in outputs)
    model.eval()
    torch.testing.assert_close(model(story, query), evaluation)


def test_gradcheck():
    """Finite differences agree with autograd for C^1 (memory, attention and output paths)."""
    model = _model(hops=2)
    story, query = _tokens()
    params = dict(model.named_parameters())

    def logits_of(weight):
        return torch.func.functional_call(model, {**params, "embeddings.1.weight": weight}, (story, query))

    assert torch.autograd.gradcheck(logits_of, (params["embeddings.1.weight"].detach().clone().requires_grad_(),),
                                    fast_mode=True)



@pytest.mark.parametrize("options", [
    {},
    {"encoding": "bow", "empty_memory": "masked"},
    {"position_scale": "authors", "sentence_length": J + 1, "empty_memory": "nil", "answer_layer": "vocabulary"},
], ids=["paper", "bow_masked", "authors"])
def test_encoding_only_the_present_slots_equals_encoding_every_slot(options, monkeypatch):
    """Eager mode encodes the slots that hold a sentence and scatters them back; compiled, every slot.

    The two must agree in outputs and in every parameter's gradient, with an empty slot between
    sentences and a story with no sentence at all.
    """
    model = _model(temporal=True, **options).train()
    model.random_noise = 0.0
    story, query = _tokens()
    story[0, 3] = PAD_ID  # a hole between sentences
    story[2] = PAD_ID  # no sentence at all

    def run():
        model.zero_grad()
        logits = model(story, query)
        logits.square().sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    compact_logits, compact_grads = run()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the path a compiled forward takes
    full_logits, full_grads = run()
    torch.testing.assert_close(compact_logits, full_logits, rtol=0, atol=1e-12)
    assert compact_grads.keys() == full_grads.keys() and compact_grads
    for name in full_grads:
        torch.testing.assert_close(compact_grads[name], full_grads[name], rtol=0, atol=1e-12, msg=name)

@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"encoding": "tfidf"}, "encoding must be 'bow' or 'position'"),
        ({"tying": "none"}, "tying must be 'adjacent' or 'layerwise'"),
        ({"random_noise": 1.0}, r"random_noise must lie in \[0.0, 1.0\)"),
        ({"hops": 0}, "hops must be a positive integer"),
        ({"embedding_size": -2}, "embedding_size must be a positive integer"),
        ({"answer_offset": 20}, "answer_offset must put the 9 answer tokens"),
        ({"init_std": 0.0}, "init_std must lie in"),
        ({"position_scale": "authors"}, "position_scale 'authors' needs sentence_length J ≥ 2"),
        ({"position_scale": "authors", "sentence_length": 5, "encoding": "bow"}, "needs encoding 'position'"),
        ({"position_scale": "fixed"}, "position_scale must be 'paper' or 'authors'"),
        ({"empty_memory": "zero"}, "empty_memory must be 'masked' or 'nil'"),
        ({"answer_layer": "words"}, "answer_layer must be 'answers' or 'vocabulary'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemN2N(V, A, **kwargs)


def test_bad_inputs():
    model = _model(memory_size=5)
    story, query = _tokens()
    with pytest.raises(ValueError, match="story has 7 memory slots but memory_size is 5"):
        model(story, query)
    with pytest.raises(ValueError, match=r"expected story \(B, N, J\) and query \(B, Jq\)"):
        model(story[0], query)



@pytest.mark.parametrize("where, value, message", [
    ("story", V, (rf"MemN2N: story holds token id {V} \(ids from 0 to {V}\), but the vocabulary has {V} ids, "
                 rf"0 to {V - 1} \(input_size={V}\); input_size must count every token of the data")),
    ("query", V + 5, rf"MemN2N: query holds token id {V + 5} \(ids from 0 to {V + 5}\)"),
    ("query", -1, r"MemN2N: query holds token id -1 \(ids from -1 to"),
])
def test_a_token_id_outside_the_vocabulary_is_named(where, value, message):
    """A story or query id ≥ input_size was a raw IndexError (or, on a GPU, a device assert) from the embedding,
    naming neither the id nor the vocabulary size."""
    story, query = _tokens()
    (story[1, 0] if where == "story" else query[1]).index_fill_(0, torch.tensor([0]), value)
    with pytest.raises(ValueError, match=message):
        _model()(story, query)


ARCHIVE = Path(os.environ.get("MEMNET_BABI_ARCHIVE")
               or Path(__file__).resolve().parents[2] / "shared" / "data" / "babi" / "tasks_1-20_v1-2.tar.gz")


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.is_file(), reason="bAbI archive not found (set MEMNET_BABI_ARCHIVE)")
def test_memn2n_learns_task_1(tmp_path):
    """MemN2N (PE, TE, 3 hops, adjacent) answers more than 95% of task 1's test questions (1k)."""
    import pytorch_lightning as pl

    from memnet.lightning import QAModule
    from tasks.babi import BabiDataModule

    pl.seed_everything(0)
    data = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=1, batch_size=32, seed=0)
    net = MemN2N(data.input_size, data.output_size, embedding_size=20, hops=3, random_noise=0.1, seed=0)
    module = QAModule(net, optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    trainer = pl.Trainer(max_epochs=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=40.0)
    trainer.fit(module, datamodule=data)
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    assert result["test/accuracy"] > 0.95


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_logged_loss_is_per_question_whatever_the_reduction_and_the_batch_sizes(reduction):
    import pytorch_lightning as pl

    from memnet.lightning import QAModule

    class Uniform(torch.nn.Module):  # uniform over 4 answers: ln 4 nats for every question
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, story, query):
            return torch.zeros(story.shape[0], 4) + 0 * self.p

    batches = [{"story": torch.zeros(n, 2, 3, dtype=torch.long), "query": torch.zeros(n, 3, dtype=torch.long),
                "answer": torch.zeros(n, dtype=torch.long)} for n in (4, 4, 1)]
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    logged = trainer.validate(QAModule(Uniform(), loss_reduction=reduction), loader, verbose=False)[0]
    assert logged["val/loss"] == pytest.approx(math.log(4), rel=1e-6)  # the batch sums gave 5.08


def _authors_lookup_reference(model: MemN2N, story: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The authors' MATLAB forward (build_model.m, MemoryL.m, train.m), lookup by lookup: each memory row is
    J tokens (the words, nil after them, the time word last; a nil sentence is J nil words), each looked up
    in the embedding with its time rows stacked under it and weighted by l_j; the question the first J − 1."""
    J, slots, hops = model.sentence_length, model.memory_size, model.hops
    pe = authors_position_encoding(J, model.embedding_size, dtype=torch.float64)
    vocabulary = model.input_size

    def table(index):  # LookUpTable of voc_sz + sz rows
        return torch.cat([model.embeddings[index].weight, model.temporal_embeddings[index].weight])

    outputs = []
    for b in range(story.shape[0]):
        rows = []
        for n in range(slots):
            words = story[b, n].tolist() if n < story.shape[1] else []
            words = [w for w in words if w != PAD_ID]
            rows.append(words + [PAD_ID] * (J - 1 - len(words)) + ([vocabulary + n] if words else [PAD_ID]))
        question = [w for w in query[b].tolist() if w != PAD_ID]
        question = question + [PAD_ID] * (J - 1 - len(question))
        u = sum(pe[j] * table(0)[w] for j, w in enumerate(question))
        for hop in range(1, hops + 1):
            a, c = table(hop - 1), table(hop)
            memory = torch.stack([sum(pe[j] * a[w] for j, w in enumerate(row)) for row in rows])
            output = torch.stack([sum(pe[j] * c[w] for j, w in enumerate(row)) for row in rows])
            u = u + (memory @ u).softmax(0) @ output
        logits = table(hops) @ u  # W = C^K over the words and the time rows, the nil word's included
        first = torch.arange(4, 4 + model.output_size)
        rest = torch.tensor([i for i in range(len(logits)) if not 4 <= i < 4 + model.output_size])
        outputs.append(logits[torch.cat([first, rest])])
    return torch.stack(outputs)


def test_the_authors_nil_word_equals_their_lookup_tables_in_value_and_gradient():
    """nil_word: authors. The nil rows are 0 but get the gradient of every padding position (so it counts in
    their clipping norm). C^K's is set non-zero here so that the reference checks its place in the logits (the
    nil word's answer) and in the last hop's outputs."""
    model = _model(position_scale="authors", sentence_length=J + 1, empty_memory="nil", answer_layer="vocabulary",
                   nil_word="authors")
    with torch.no_grad():
        model.embeddings[-1].weight[PAD_ID].normal_(generator=torch.Generator().manual_seed(1))
    story, query = _tokens()
    logits = model(story, query)
    expected = _authors_lookup_reference(model, story, query)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    parameters = [e.weight for e in model.embeddings] + [t.weight for t in model.temporal_embeddings]
    grads = torch.autograd.grad((logits * weights).sum(), parameters)
    reference = torch.autograd.grad((expected * weights).sum(), parameters)
    for got, want in zip(grads, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for grad in grads[: len(model.embeddings)]:
        assert grad[PAD_ID].abs().sum() > 0  # the nil word's gradient, which nil_word: zero never gives


def test_the_authors_nil_rows_are_0_after_each_step_when_callbacks_see_them():
    """SGD moves every nil row (they have a gradient); all are 0 again before a callback (a checkpoint written at
    the batch's end) sees the weights: A^1 … A^K's (``train.m``) and C^K's = W's too (``Memory.update`` zeroes
    every hop's output table after the update, and W is the same ``Weight`` object as C^K), so the nil word's
    logit is 0 at every step."""
    import pytorch_lightning as pl

    from memnet.lightning import QAModule

    net = _model(position_scale="authors", sentence_length=J + 1, empty_memory="nil", answer_layer="vocabulary",
                 nil_word="authors").float()
    module = QAModule(net, loss_reduction="sum", optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    story, query = _tokens()
    batches = [{"story": story, "query": query, "answer": torch.tensor([0, 1, 2])}] * 3
    seen, moved = [], []

    class Watch(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            moved.append(float(pl_module.net.embeddings[-1].weight.grad[PAD_ID].abs().sum()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append([float(e.weight[PAD_ID].abs().sum()) for e in pl_module.net.embeddings])

    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Watch()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert len(seen) == 3 and len(moved) == 3
    assert all(grad > 0 for grad in moved)  # C^K's nil row has a gradient (it counts in the clipping norm) ...
    for step in seen:
        assert step == [0.0] * len(step)  # ... and is 0 again after the step, as every other nil row
    logits = module.net(story, query)
    vocabulary_nil = module.net.output_size + PAD_ID  # the logits put the answer classes first, then words 0, 1, ...
    assert (logits[:, vocabulary_nil] == 0).all()


@pytest.mark.parametrize("options", [
    {"position_scale": "paper", "empty_memory": "nil"},
    {"position_scale": "authors", "sentence_length": J + 1, "empty_memory": "masked"},
    {"position_scale": "authors", "sentence_length": J + 1, "empty_memory": "nil", "temporal": False},
])
def test_the_authors_nil_word_needs_the_rest_of_their_recipe(options):
    with pytest.raises(ValueError, match="nil_word 'authors'"):
        _model(nil_word="authors", **options)
    with pytest.raises(ValueError, match="nil_word must be"):
        _model(nil_word="none")


@pytest.mark.parametrize("with_switch", [False, True])
def test_a_linear_start_that_no_callback_ends_is_refused_when_training_starts(with_switch):
    """linear_start: true without a LinearStartSwitch (say, --trainer.callbacks replaced the config's list) trained,
    validated and tested the whole run without a softmax, exit 0."""
    import pytorch_lightning as pl

    from memnet.callbacks import LinearStartSwitch
    from memnet.lightning import QAModule

    net = _model(linear_start=True).float()
    module = QAModule(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.01))
    story, query = _tokens()
    batches = [{"story": story, "query": query, "answer": torch.tensor([0, 1, 2])}] * 2
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[LinearStartSwitch(epochs=1)] if with_switch else [])
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    if with_switch:
        trainer.fit(module, train_dataloaders=loader)
        assert trainer.global_step == 2
    else:
        with pytest.raises(ValueError, match="no callback puts it back: add memnet.callbacks.LinearStartSwitch"):
            trainer.fit(module, train_dataloaders=loader)
        assert trainer.global_step == 0


def _matlab_pe(J: int, d: int):
    """build_model.m's config.weight, (d, J): 1 + 4 (i − (d+1)/2)(j − (J+1)/2) / d / J, i the dimension, j the position."""
    import numpy as np

    i, j = np.arange(1, d + 1)[:, None], np.arange(1, J + 1)[None, :]
    return 1 + 4 * (i - (d + 1) / 2) * (j - (J + 1) / 2) / d / J


def _matlab_sgd_step(tables, memories, questions, targets, *, lr, max_grad_norm, softmax):
    """One step of the authors' train.m in NumPy float64, written from their modules' fprop/bprop/update: LookUpTable
    → ElemMult(config.weight) → Sum(2) per memory and question, MatVecProd, Softmax (taken out by
    train_linear_start.m), AddTable, LinearNB(…, true) sharing C^K's Weight, CrossEntropyLoss with size_average false
    and do_softmax_brop; then Weight.update: each table's gradient scaled to max_grad_norm where MATLAB's norm (the
    largest singular value) exceeds it, D − lr·grad, and the nil column (1 there, 0 here) set to 0 (train.m for
    A^1 … A^K, Memory.update for C^1 … C^K).

    tables: K + 1 arrays (d, V + N), column w the word w, column V + t the time word t + 1 (0: the most recent).
    memories: per question (J, N) token ids (nil 0, the time word in row J); questions: per question (J − 1,) ids.
    Returns the logits (B, V + N), the cost, the gradients before clipping and the tables after the update.
    """
    import numpy as np

    hops, (d, J) = len(tables) - 1, (tables[0].shape[0], memories[0].shape[0])
    pe = _matlab_pe(J, d)
    grads = [np.zeros_like(t) for t in tables]
    logits, cost = [], 0.0

    def looked_up(table, data):  # (d, N): Σ_j l_j ∘ table[:, data[j, n]]
        return (table[:, data] * pe[:, :, None]).sum(1)

    for data, question, target in zip(memories, questions, targets):
        states = [(tables[0][:, question] * pe[:, : J - 1]).sum(1)]
        cache = []
        for k in range(1, hops + 1):
            m, c = looked_up(tables[k - 1], data), looked_up(tables[k], data)
            scores = m.T @ states[-1]
            p = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if softmax else scores
            cache.append((m, c, p))
            states.append(states[-1] + c @ p)
        z = tables[hops].T @ states[-1]
        y = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        logits.append(z)
        cost += -(z[target] - z.max() - np.log(np.exp(z - z.max()).sum()))  # −log y[target], natural log, summed
        grad_z = y.copy()
        grad_z[target] -= 1
        grads[hops] += np.outer(states[-1], grad_z)
        grad_u = tables[hops] @ grad_z
        for k in range(hops, 0, -1):
            m, c, p = cache[k - 1]
            grad_c = np.outer(grad_u, p)
            grad_p = c.T @ grad_u
            grad_scores = p * (grad_p - (p * grad_p).sum()) if softmax else grad_p
            grad_m = np.outer(states[k - 1], grad_scores)
            grad_u = grad_u + m @ grad_scores
            for j in range(J):
                for n in range(data.shape[1]):
                    grads[k][:, data[j, n]] += pe[:, j] * grad_c[:, n]
                    grads[k - 1][:, data[j, n]] += pe[:, j] * grad_m[:, n]
        for j in range(J - 1):
            grads[0][:, question[j]] += pe[:, j] * grad_u
    updated = []
    for table, grad in zip(tables, grads):
        norm = np.linalg.norm(grad, 2)
        step = grad * max_grad_norm / norm if norm > max_grad_norm else grad
        table = table - lr * step
        table[:, 0] = 0
        updated.append(table)
    return np.array(logits), cost, grads, updated


@pytest.mark.parametrize("linear_start, init_std, max_grad_norm", [(False, 0.5, 40.0), (True, 0.25, 50.0)],
                         ids=["softmax", "linear_start"])
def test_one_training_step_of_the_recipe_equals_the_authors_matlab_step(linear_start, init_std, max_grad_norm):
    """The recipe's model and QAModule (configs/recipes/memn2n.yaml: PE with the authors' J, temporal, adjacent
    tying, nil memory, W = C^K over the vocabulary, nil_word authors, summed loss, SGD, per-matrix spectral
    clipping) take one Lightning step on a batch of 2 stories (3 and 2 sentences in a memory of 5, 3 hops, d = 6,
    V = 12, J = 5), against the authors' MATLAB step transcribed in NumPy float64 (_matlab_sgd_step): logits, the
    loss the module backpropagates, every table's gradient and every weight after the clipped update, nil columns
    0, each within 1e-10. Some tables are clipped and some not, so a Frobenius norm, a cost averaged over the batch
    or the nil rows left as SGD moved them each fail it."""
    import numpy as np
    import pytorch_lightning as pl

    from memnet.lightning import QAModule

    vocabulary, answers, offset, d, hops, slots, sentence = 12, 3, 4, 6, 3, 5, 5
    torch.manual_seed(0)
    net = MemN2N(vocabulary, answers, embedding_size=d, hops=hops, memory_size=slots, encoding="position",
                 temporal=True, random_noise=0.0, linear_start=linear_start, tying="adjacent", answer_offset=offset,
                 init_std=init_std, position_scale="authors", sentence_length=sentence, empty_memory="nil",
                 answer_layer="vocabulary", nil_word="authors").double()
    story = torch.tensor([[[7, 8, 4, 0], [9, 10, 11, 5], [8, 6, 0, 0]],  # slot 0 the most recent
                          [[11, 7, 0, 0], [10, 9, 8, 7], [0, 0, 0, 0]]])
    query = torch.tensor([[9, 8, 0], [7, 11, 10]])
    answer = torch.tensor([1, 2])

    def tables():  # MATLAB's D: (d, V + N), the time words after the vocabulary
        return [torch.cat([e.weight, t.weight]).detach().numpy().T.copy()
                for e, t in zip(net.embeddings, net.temporal_embeddings)]

    memories = []
    for b, sentences in enumerate((3, 2)):
        data = np.zeros((sentence, slots), dtype=int)  # all nil: the nil sentences fill the memory
        for n in range(sentences):
            words = [w for w in story[b, n].tolist() if w != PAD_ID]
            data[: len(words), n] = words
            data[sentence - 1, n] = vocabulary + n  # train.m without noise: time word 1 for the most recent
        memories.append(data)
    questions = [np.array([w for w in query[b].tolist()] + [0] * (sentence - 1 - query.shape[1])) for b in range(2)]
    before = tables()
    logits, cost, grads, after = _matlab_sgd_step(before, memories, questions, (answer + offset).tolist(), lr=0.05,
                                                  max_grad_norm=max_grad_norm, softmax=not linear_start)
    norms = [np.linalg.norm(g, 2) for g in grads]
    assert any(n > max_grad_norm for n in norms) and any(n < max_grad_norm for n in norms)

    order = list(range(offset, offset + answers)) + list(range(offset)) + list(range(offset + answers, vocabulary + slots))
    net.train()
    np.testing.assert_allclose(net(story, query).detach().numpy(), logits[:, order], rtol=0, atol=1e-10)
    module = QAModule(net, loss_reduction="sum", optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
                      clip_per_matrix=max_grad_norm, clip_norm="spectral")
    seen = {}

    class Watch(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            seen["loss"] = float(loss)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before the module's clipping
            seen["grads"] = [torch.cat([e.weight.grad, t.weight.grad]).numpy().T.copy()
                             for e, t in zip(net.embeddings, net.temporal_embeddings)]

    callbacks = [Watch()] + ([LinearStartSwitch(epochs=1)] if linear_start else [])
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    batch = {"story": story, "query": query, "answer": answer}
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    assert seen["loss"] == pytest.approx(cost, rel=1e-12)
    for got, want in zip(seen["grads"], grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * max(1.0, np.abs(want).max()))
    for got, want in zip(tables(), after):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
        assert not got[:, PAD_ID].any()
