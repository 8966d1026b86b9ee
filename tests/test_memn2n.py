"""MemN2N: position encoding, hops against a loop over the paper's equations, tying schemes,
linear start, random noise, padding, bad input; and the slow check that it learns bAbI task 1."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from memnet.callbacks import LinearStartSwitch
from memnet.models.memn2n import PAD_ID, MemN2N, position_encoding

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
    """The paper's equations, one story, one sentence and one hop at a time."""
    outputs = []
    for b in range(story.shape[0]):
        def encode(words, weight):
            words = [w for w in words.tolist() if w != PAD_ID]
            if model.encoding == "bow":
                return sum(weight[w] for w in words)
            pe = position_encoding(len(words), model.embedding_size, dtype=weight.dtype)
            return sum(pe[j] * weight[w] for j, w in enumerate(words))

        sentences = [s for s in story[b] if (s != PAD_ID).any()]
        u = encode(query[b], model.query_embedding().weight)
        for hop in range(1, model.hops + 1):
            memory, output = [], []
            for i, sentence in enumerate(sentences):
                m = encode(sentence, model.input_embedding(hop).weight)
                c = encode(sentence, model.output_embedding(hop).weight)
                if model.temporal:
                    m = m + model.input_temporal(hop).weight[i]
                    c = c + model.output_temporal(hop).weight[i]
                memory.append(m)
                output.append(c)
            scores = torch.stack([u @ m for m in memory])
            p = scores.softmax(0) if bool(model.softmax_enabled) else scores
            o = sum(p_i * c for p_i, c in zip(p, output))
            u = (model.linear_map(u) if model.tying == "layerwise" else u) + o
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
        switch.on_validation_epoch_end(trainer, module)
        assert not bool(model.softmax_enabled)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=3, callback_metrics={"val/loss": 3.6})
    switch.on_validation_epoch_end(trainer, module)
    assert bool(model.softmax_enabled) and switch.switched_at == 3
    with pytest.raises(ValueError, match="patience must be a positive integer"):
        LinearStartSwitch(patience=0)


def test_linear_start_switch_max_epochs_and_other_models():
    model = _model(linear_start=True)
    module = SimpleNamespace(net=model, log=lambda *args, **kwargs: None)
    switch = LinearStartSwitch(patience=5, max_epochs=2)
    for epoch, loss in enumerate([5.0, 4.0]):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics={"val/loss": loss})
        switch.on_validation_epoch_end(trainer, module)
    assert bool(model.softmax_enabled) and switch.switched_at == 1
    plain = SimpleNamespace(net=torch.nn.Linear(2, 2))  # no softmax flag: nothing happens
    switch.on_validation_epoch_end(SimpleNamespace(sanity_checking=False, current_epoch=0, callback_metrics={}), plain)


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
