"""bAbI data: strict parser, real files, DatasetDict and its cache, vocabulary, batches, the
`memnet data babi` command, the table, and the QA LightningModule's metrics."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from memnet.cli import babi_table as table_command
from memnet.cli.babi_table import babi_table
from memnet.cli.rebuild import RebuildError
from memnet.metrics import task_errors
from tasks import babi
from tasks.babi import (
    BabiDataModule,
    BabiFormatError,
    BabiSource,
    UnsafeArchiveError,
    Vocabulary,
    collate_babi,
    load_babi,
    parse_babi,
    safe_extract,
    verify_archive,
)
from tasks.babi import archive as babi_archive

ARCHIVE = Path(os.environ.get("MEMNET_BABI_ARCHIVE")
               or Path(__file__).resolve().parents[2] / "shared" / "data" / "babi" / babi.ARCHIVE_NAME)
needs_data = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"bAbI archive not found at {ARCHIVE} "
                                "(set MEMNET_BABI_ARCHIVE)")

STORY = (
    "1 Mary moved to the bathroom.\n"
    "2 John went to the hallway.\n"
    "3 Where is Mary? \tbathroom\t1\n"
    "4 Daniel went back to the hallway.\n"
    "5 Where is Daniel?\thallway\t4\n"
    "1 Sandra journeyed to the garden.\n"
    "2 Where is Sandra?\tgarden\t1\n"
)


@pytest.fixture(scope="module")
def source() -> BabiSource:
    return BabiSource(ARCHIVE)


# ----------------------------------------------------------------------------- parser


def test_parse_known_story():
    examples = parse_babi(STORY, source="toy.txt", task=1)
    assert len(examples) == 3
    first, second, third = examples
    assert first["story"] == [["mary", "moved", "to", "the", "bathroom"], ["john", "went", "to", "the", "hallway"]]
    assert first["query"] == ["where", "is", "mary"]
    assert first["answer"] == "bathroom" and first["supporting"] == [0] and first["task"] == 1
    # the question line is not part of the story; IDs after it still map to the right sentence
    assert second["story"][-1] == ["daniel", "went", "back", "to", "the", "hallway"]
    assert len(second["story"]) == 3 and second["supporting"] == [2]
    # a new story restarts at ID 1
    assert third["story"] == [["sandra", "journeyed", "to", "the", "garden"]] and third["supporting"] == [0]
    assert [example["story_index"] for example in examples] == [0, 0, 1]


def test_whitespace_before_tab_does_not_matter():
    spaced = parse_babi("1 A b.\n2 Where is a? \tb\t1\n", source="x", task=1)
    tight = parse_babi("1 A b.\n2 Where is a?\tb\t1\n", source="x", task=1)
    assert spaced == tight


def test_list_answers_stay_one_string():
    examples = parse_babi("1 Mary took the apple.\n2 What is Mary carrying?\tapple,football\t1\n", source="x", task=8)
    assert examples[0]["answer"] == "apple,football"


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("", None, "empty file"),
        ("1 Mary went home.\n2 John went out.\n", None, "no question in the file"),  # parsed to no example
        ("1 Mary went home.\r\n2 Where is Mary?\thome\t1\r\n", 1, "carriage return"),
        ("1 Mary went home.\n\n2 Where is Mary?\thome\t1\n", 2, "empty line"),
        ("1 Mary went home.\n2 Where is Mary? home 1\n", 2, "is a question (it has a '?') but no tabs"),
        ("1 Mary went home.\n2 Where is Mary?\n", 2, "is a question (it has a '?') but no tabs"),
        ("1 Pallavi bhedia hai ?.\n2 Pallavi kya hai?\tbhedia\t1\n", 2, None),  # Hindi statements end with '?.'
        ("1 Mary went home.\n2 Where is Mary?\thome\n", 2, "3 fields"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t1\textra\n", 2, "3 fields"),
        ("x Mary went home.\n", 1, "positive integer"),
        ("1 Mary went home.\n2a Where is Mary?\thome\t1\n", 2, "positive integer"),
        ("0 Mary went home.\n", 1, "positive integer"),
        ("1Mary\n", 1, "'ID text'"),
        ("2 Mary went home.\n", 1, "first line must have ID 1"),
        ("1 Mary went home.\n3 Where is Mary?\thome\t1\n", 2, "expected ID 2"),
        ("1 Mary went home.\n2 John left.\n2 Where is Mary?\thome\t1\n", 3, "expected ID 3"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t2\n", 2, "earlier line"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t5\n", 2, "earlier line"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t1\n3 Where is Mary?\thome\t2\n", 3, "points at a question"),
        ("1 Mary went home.\n2 Where is Mary?\thome\tone\n", 2, "supporting-fact ID must be a positive integer"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t\n", 2, "at least one supporting-fact ID"),
        ("1 Mary went home.\n2 Where is Mary?\t\t1\n", 2, "empty answer"),
        ("1 Mary went home.\n2 Where is Mary?\t \t1\n", 2, "empty answer"),
        ("1 Mary went home.\n2 ?\thome\t1\n", 2, "empty question"),
        ("1 .\n", 1, "at least one word"),
        # statements no question reads: once dropped unseen
        ("1 Mary went home.\n2 Where is Mary?\thome\t1\n3 John went out.\n", 3,
         "statements after the last question of their story (line 3): no question reads them"),
        (("1 Mary went home.\n2 Where is Mary?\thome\t1\n3 John went out.\n4 Ann left.\n"
          "1 Bob went home.\n2 Where is Bob?\thome\t1\n"), 3, "after the last question of their story (lines 3-4)"),
        ("1 Mary went home.\n2 John went out.\n1 Bob went home.\n2 Where is Bob?\thome\t1\n", 1,
         "statements of a story without a question (lines 1-2)"),
    ],
)
def test_malformed_lines_name_file_line_and_expectation(text, line, expected):
    if expected is None:  # a control case: a statement ending with '?.' is not a question
        assert len(parse_babi(text, source="qa1_bad.txt", task=1)) == 1
        return
    with pytest.raises(BabiFormatError) as info:
        parse_babi(text, source="qa1_bad.txt", task=1)
    message = str(info.value)
    assert message.startswith("qa1_bad.txt")
    assert expected in message
    if line is not None:
        assert f"line {line}:" in message and info.value.line_number == line


def test_statements_between_questions_are_read_by_the_next_question():
    # the control of the refusal of statements after a story's last question
    text = "1 Mary went home.\n2 Where is Mary?\thome\t1\n3 John went out.\n4 Where is John?\tout\t3\n"
    examples = parse_babi(text, source="x", task=1)
    assert [example["story"] for example in examples] == [[["mary", "went", "home"]],
                                                          [["mary", "went", "home"], ["john", "went", "out"]]]
    assert examples[1]["supporting"] == [1]


def test_supporting_id_restarts_with_story():
    # ID 2 exists in the first story but not in the second: it must not be found
    text = "1 A went b.\n2 C went d.\n3 Where is a?\tb\t1\n1 E went f.\n2 Where is e?\tf\t2\n"
    with pytest.raises(BabiFormatError, match="line 5: .*earlier line"):
        parse_babi(text, source="x", task=1)


# ----------------------------------------------------------------------------- real files


@needs_data
def test_real_en_question_counts(source):
    for task in babi.ALL_TASKS:
        for split in ("train", "test"):
            name = babi.task_file(task, split, language="en", size="1k")
            examples = parse_babi(source.read(name), source=name, task=task)
            assert len(examples) == 1000, name


@needs_data
@pytest.mark.parametrize("task", [1, 19])
def test_real_en_10k_question_counts(source, task):
    train = babi.task_file(task, "train", size="10k")
    test = babi.task_file(task, "test", size="10k")
    assert len(parse_babi(source.read(train), source=train, task=task)) == 10000
    assert len(parse_babi(source.read(test), source=test, task=task)) == 1000


@needs_data
@pytest.mark.slow
def test_real_en_10k_all_question_counts(source):
    for task in babi.ALL_TASKS:
        if task == 3:
            continue  # its 10k training file is not in the archive
        name = babi.task_file(task, "train", size="10k")
        assert len(parse_babi(source.read(name), source=name, task=task)) == 10000


@needs_data
def test_absent_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="en-10k/qa3_three-supporting-facts_train.txt"):
        load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, size="10k", tasks=[3])


# ----------------------------------------------------------------------------- DatasetDict and cache


@needs_data
def test_dataset_splits_columns_and_seeded_validation(tmp_path):
    data = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[1, 19], seed=3)
    assert {name: len(split) for name, split in data.items()} == {"train": 1800, "validation": 200, "test": 2000}
    assert set(data["train"].column_names) == {"story", "query", "answer", "supporting", "task"}
    row = data["test"][0]
    assert row["story"][0] == ["john", "travelled", "to", "the", "hallway"]  # oldest first
    assert all(0 <= i < len(row["story"]) for i in row["supporting"])
    assert sorted(set(data["validation"]["task"])) == [1, 19]
    # the same seed gives the same held-out questions, another seed others
    again = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path / "other", tasks=[1, 19], seed=3)
    other = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[1, 19], seed=4)
    assert again["validation"]["query"] == data["validation"]["query"]
    assert again["validation"]["story"] == data["validation"]["story"]
    assert other["validation"]["story"] != data["validation"]["story"]


@pytest.mark.parametrize("val_holdout", ["story", "question"])
def test_a_val_fraction_that_leaves_a_task_without_validation_is_refused(tmp_path, val_holdout):
    # five stories of one question: 5% of them rounds to none, and the task silently had no validation error
    folder = tmp_path / "data" / "en"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / babi.task_file(1, split).split("/")[1]).write_text(STORY.split("5 Where")[0].replace(
            "4 Daniel went back to the hallway.\n", "") * 5)
    with pytest.raises(ValueError, match="holds out 0 of the 5 training questions of task 1"):
        load_babi(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", tasks=[1], val_fraction=0.05,
                  val_holdout=val_holdout)
    data = load_babi(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", tasks=[1], val_fraction=0.2,
                     val_holdout=val_holdout)
    assert (len(data["train"]), len(data["validation"])) == (4, 1)


@needs_data
def test_validation_holds_out_whole_stories_so_no_training_question_is_in_it(tmp_path):
    # tasks 15, 17 and 18 ask a story's question twice: held out by question, half of their validation
    # questions were copies of training ones
    def examples(split):
        return {(tuple(map(tuple, story)), tuple(query), task)
                for story, query, task in zip(split["story"], split["query"], split["task"])}

    data = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[15, 17])
    assert 180 <= len(data["validation"]) <= 220 and len(data["train"]) + len(data["validation"]) == 2000  # 10% of stories
    assert not examples(data["validation"]) & examples(data["train"])
    old = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[15, 17], val_holdout="question")
    assert len(examples(old["validation"]) & examples(old["train"])) > 50


@needs_data
def test_a_resumed_run_shuffles_its_epoch_as_the_unbroken_run_did(tmp_path):
    module = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=[1], batch_size=50)
    module.setup("fit")
    loader = module.train_dataloader()
    unbroken = [[b["answer"].tolist() for b in loader] for _ in range(3)]
    assert unbroken[0] != unbroken[2]
    resumed = module.train_dataloader()  # a fresh loader, as after a resume; Lightning sets the epoch
    resumed.sampler.set_epoch(2)
    assert [b["answer"].tolist() for b in resumed] == unbroken[2]


@needs_data
def test_second_load_comes_from_cache(tmp_path, monkeypatch):
    first = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[2])
    assert len(list(tmp_path.glob("babi-*"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(babi.data, "parse_babi", refuse)  # where load_babi looks it up
    second = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[2])
    assert second["train"]["answer"] == first["train"]["answer"]
    with pytest.raises(AssertionError, match="parsed again"):  # other options: a new build
        load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, tasks=[2], seed=1)


@needs_data
def test_extracted_folder_and_env_var(tmp_path, monkeypatch):
    safe_extract(ARCHIVE, tmp_path / "data")
    monkeypatch.setenv(babi.DATA_DIR_ENV, str(tmp_path / "data"))
    source = babi.find_source(None)
    assert source.folder == tmp_path / "data" / babi.ARCHIVE_TOP
    data = load_babi(cache_dir=tmp_path / "cache", tasks=[20], language="shuffled")
    assert len(data["test"]) == 1000
    with pytest.raises(FileNotFoundError, match="does not exist"):
        babi.find_source(tmp_path / "nowhere")


@needs_data
def test_hindi_and_10k_with_task_3_from_1k(tmp_path):
    hindi = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, language="hn", tasks=[1])
    assert len(hindi["train"]) == 900 and len(hindi["test"]) == 1000
    big = load_babi(data_dir=ARCHIVE, cache_dir=tmp_path, size="10k", tasks=[1, 3], train_1k_tasks=[3])
    counts = {t: big["train"]["task"].count(t) + big["validation"]["task"].count(t) for t in (1, 3)}
    assert counts == {1: 10000, 3: 1000}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": [21]}, "tasks must be integers in 1-20"),
        ({"tasks": [1, 1]}, "twice"),
        ({"tasks": []}, "at least one task"),
        ({"tasks": "some"}, "tasks must be a task number"),
        ({"language": "fr"}, "language must be one of"),
        ({"size": "5k"}, "size must be one of"),
        ({"memory_size": 0}, "memory_size must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"val_fraction": 1.0}, r"val_fraction must lie in \(0, 1\)"),
        ({"val_fraction": 0.0}, r"val_fraction must lie in \(0, 1\): validation needs examples"),
        ({"val_holdout": "sentence"}, "val_holdout must be one of"),
    ],
)
def test_data_module_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BabiDataModule(**kwargs)


def test_train_1k_tasks_must_be_selected_and_10k(tmp_path):
    with pytest.raises(ValueError, match="not among tasks"):
        load_babi(data_dir=tmp_path, tasks=[1], size="10k", train_1k_tasks=[3])
    with pytest.raises(ValueError, match="only applies to size '10k'"):
        load_babi(data_dir=tmp_path, tasks=[3], train_1k_tasks=[3])


# ----------------------------------------------------------------------------- vocabulary and batches


def test_vocabulary_layout():
    vocabulary = Vocabulary.build(["n,w", "garden", "yes"], ["mary", "garden", "went", "n,w"])
    assert vocabulary.tokens[:4] == babi.SPECIAL_TOKENS
    assert vocabulary.answers == ("garden", "n,w", "yes")
    for answer in vocabulary.answers:  # class a is token a + ANSWER_OFFSET
        assert vocabulary.tokens[vocabulary.answer_class(answer) + babi.ANSWER_OFFSET] == answer
    assert len(vocabulary) == 4 + 3 + 2  # answers are not repeated among the words
    assert vocabulary.encode(["mary", "zebra"]) == [vocabulary.tokens.index("mary"), babi.UNK_ID]
    with pytest.raises(KeyError, match="'mary' has no class"):
        vocabulary.answer_class("mary")


def _encoded(story_lengths, sentence_words=3):
    vocabulary = Vocabulary.build(["a"], [f"w{i}" for i in range(40)])

    class Split:
        def __init__(self, rows):
            self.rows = rows

        def to_dict(self):
            return {k: [r[k] for r in self.rows] for k in ("story", "query", "answer", "task")}

    rows = [{"story": [[f"w{s}"] * (1 + s % sentence_words) for s in range(n)], "query": ["w0"] * (1 + n % 2),
             "answer": "a", "task": 1 + n % 3} for n in story_lengths]
    return vocabulary, babi.EncodedSplit(babi.encode_split(Split(rows), vocabulary, memory_size=5))


def test_story_truncated_to_memory_size_most_recent_first():
    vocabulary, split = _encoded([9])
    story = split[0]["story"]
    assert story.shape[0] == 5  # the 5 most recent of 9 sentences
    expected_words = [f"w{s}" for s in (8, 7, 6, 5, 4)]  # slot 0 = the most recent
    assert [vocabulary.tokens[row[0]] for row in story] == expected_words


def test_truncating_a_supporting_sentence_warns_with_the_count_per_task():
    vocabulary = Vocabulary.build(["a"], ["w"])

    class Split:
        def to_dict(self):
            return {"story": [[["w"]] * 9, [["w"]] * 9, [["w"]] * 3], "query": [["w"]] * 3, "answer": ["a"] * 3,
                    "supporting": [[2, 8], [4], [0]], "task": [3, 3, 1]}

    with pytest.warns(UserWarning, match=r"drops a supporting sentence of 1 of the 3 questions \(task 3: 1\)"):
        babi.encode_split(Split(), vocabulary, memory_size=5)  # keeps sentences 4-8: the fact 2 is lost, 4 is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        babi.encode_split(Split(), vocabulary, memory_size=7)


@needs_data
def test_the_memory_cut_warns_again_when_its_token_ids_come_from_the_cache(tmp_path):
    """The second run on one cache reads the encoded split back; it was silent about the questions it cannot answer."""
    for _ in range(2):  # the first run encodes the split and caches it, the second reads it back
        module = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=[3], memory_size=20)
        with pytest.warns(UserWarning, match=r"memory_size 20 drops a supporting sentence of 33 of the 1000 "
                                             r"questions \(task 3: 33\)"):
            module.setup("test")
    assert list(tmp_path.glob("babi-*/encoded-test-memory20.npz"))


def test_collate_pads_to_longest_story_sentence_and_question():
    _, split = _encoded([2, 4, 3])
    batch = collate_babi([split[i] for i in range(3)])
    assert batch["story"].shape == (3, 4, 3) and batch["query"].shape == (3, 2)
    assert batch["story_length"].tolist() == [2, 4, 3]
    assert (batch["story"][0, 2:] == babi.PAD_ID).all()  # empty slots are padding
    assert batch["answer"].tolist() == [0, 0, 0] and batch["task"].tolist() == [3, 2, 1]


@needs_data
def test_data_module_sizes_and_batches(tmp_path):
    module = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=[1, 8], batch_size=7,
                            memory_size=4)
    assert module.input_size == len(module.vocabulary)
    assert module.output_size == module.vocabulary.num_answers
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["story"].shape[0] == 7 and batch["story"].shape[1] <= 4
    assert int(batch["story"].max()) < module.input_size and int(batch["answer"].max()) < module.output_size
    first = [b["answer"].tolist() for _, b in zip(range(3), module.train_dataloader())]
    second = [b["answer"].tolist() for _, b in zip(range(3), module.train_dataloader())]
    assert first == second  # seeded shuffling


# ----------------------------------------------------------------------------- `memnet data babi`


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo], name="bad.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            data = b"1 Mary went home.\n2 Where is Mary?\thome\t1\n" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("../evil.txt"), r"'\.\.'"),
        (_member("tasks_1-20_v1-2/../../evil.txt"), r"'\.\.'"),
        (_member("/tmp/evil.txt"), "absolute path"),
        (_member("tasks_1-20_v1-2/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("tasks_1-20_v1-2/hard", tarfile.LNKTYPE, "../outside"), "is a link"),
        (_member("tasks_1-20_v1-2/fifo", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_data_command_refuses_unsafe_archive(tmp_path, member, message):
    good = _member("tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt")
    archive = _tar_with(tmp_path, [good, member])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=message):  # even an archive the user vouches for
        babi.data_main(["--archive", str(archive), "--dest", str(target), "--sha256", babi.sha256_file(archive)])
    assert not (target / "tasks_1-20_v1-2").exists()  # nothing was extracted
    assert not (tmp_path / "evil.txt").exists()


def test_data_command_through_cli_reports_unsafe_archive(tmp_path, capsys):
    """Refusals are one line naming the culprit and exit 2, as every memnet command (they exited 1); an unknown
    data set is named; `memnet data --help` lists the data sets (it was refused as no data set, exit 1)."""
    from memnet.cli import main

    archive = _tar_with(tmp_path, [_member("../evil.txt")])
    for argv, expected in (
        (["data", "babi", "--archive", str(archive), "--dest", str(tmp_path / "t"), "--sha256",
          babi.sha256_file(archive)], "memnet data babi: "),  # the member that points outside, below
        (["data", "mnist"], "memnet data: unknown data set 'mnist', one of babi"),
        (["data"], "memnet data: name a data set, one of babi"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(expected) and len(err.splitlines()) == 1, err
        assert argv[1:2] != ["babi"] or "points outside" in err, err
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as exit_info:
            main(["data", flag])
        assert exit_info.value.code == 0 and "babi" in capsys.readouterr().out


def test_data_command_with_a_mistyped_archive_makes_no_dest_folder(tmp_path, capsys):
    """`--archive` naming no file is refused before `--dest` is made (it left an empty folder behind)."""
    with pytest.raises(SystemExit) as exit_info:
        babi.data_main(["--archive", str(tmp_path / "tasks.tar.gzz"), "--dest", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and "tasks.tar.gzz is not a file" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_data_command_extracts_a_safe_archive_and_checks_sha256(tmp_path, capsys):
    archive = _tar_with(tmp_path, [_member("tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt")], "ok.tar.gz")
    with pytest.raises(babi.CorruptArchiveError, match=r"ok.tar.gz: sha256 \w+ is not the official bAbI v1.2"):
        babi.data_main(["--archive", str(archive), "--dest", str(tmp_path / "d")])
    assert not (tmp_path / "d" / "tasks_1-20_v1-2").exists()
    digest = babi.sha256_file(archive)
    folder = babi.data_main(["--archive", str(archive), "--dest", str(tmp_path / "d"), "--sha256", digest])
    assert (folder / "en" / "qa1_single-supporting-fact_train.txt").is_file()
    assert "matches the expected value" in capsys.readouterr().out
    with pytest.raises(ValueError, match="does not match the expected"):
        verify_archive(archive, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="not the official archive"):
        verify_archive(archive, official=True)


def test_extracting_again_replaces_the_archive_files_and_keeps_the_users_own(tmp_path):
    """A second extraction replaced the whole ``tasks_1-20_v1-2/``: a file the user had added in it was lost."""
    train = "tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt"
    archive = _tar_with(tmp_path, [_member(train)], "ok.tar.gz")
    argv = ["--archive", str(archive), "--dest", str(tmp_path / "d"), "--sha256", babi.sha256_file(archive)]
    folder = babi.data_main(argv)
    (folder / "en" / "notes.txt").write_text("mine")
    (folder / "mine").mkdir()
    (folder / "mine" / "run.txt").write_text("mine too")
    (tmp_path / "d" / train).write_text("edited")
    babi.data_main(argv)
    assert (folder / "en" / "notes.txt").read_text() == "mine"
    assert (folder / "mine" / "run.txt").read_text() == "mine too"
    assert (tmp_path / "d" / train).read_text().startswith("1 Mary went home.")  # the archive's file is restored
    # a folder where the archive has a file is refused, and nothing moves
    (tmp_path / "d" / train).unlink()
    (tmp_path / "d" / train).mkdir()
    (tmp_path / "d" / train / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"qa1_single-supporting-fact_train.txt is a folder where the archive has a "
                                         r"file; move it away and run again \(nothing was extracted\)"):
        babi.data_main(argv)
    assert (tmp_path / "d" / train / "x.txt").read_text() == "mine"
    assert not list((tmp_path / "d").glob(".extracting-*"))


def test_an_archive_vouched_for_by_its_sha256_but_holding_no_babi_task_is_refused(tmp_path):
    archive = _tar_with(tmp_path, [_member("other/notes.txt")], "other.tar.gz")
    dest = tmp_path / "d"
    with pytest.raises(ValueError, match=r"other.tar.gz: holds no bAbI task file \(qa1_single-supporting-fact_train"
                                         r".txt, ...\): it is not the bAbI archive; nothing was extracted"):
        babi.data_main(["--archive", str(archive), "--dest", str(dest), "--sha256", babi.sha256_file(archive)])
    assert list(dest.iterdir()) == []  # neither its folders nor a copy of it as the data's archive


def test_data_command_offline_extracts_the_verified_archive_already_in_dest(tmp_path, capsys, monkeypatch):
    """After ``--archive X --dest D`` a plain ``memnet data babi --dest D`` uses D's copy: no download (offline here)."""
    archive = _tar_with(tmp_path, [_member("tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt")], "ok.tar.gz")
    digest = babi.sha256_file(archive)
    babi.data_main(["--archive", str(archive), "--dest", str(tmp_path / "d"), "--sha256", digest])
    shutil.rmtree(tmp_path / "d" / "tasks_1-20_v1-2")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(babi_archive.urllib.request, "urlopen", offline)
    folder = babi.data_main(["--dest", str(tmp_path / "d"), "--sha256", digest])
    assert (folder / "en" / "qa1_single-supporting-fact_train.txt").is_file()
    assert "extracting it (no download)" in capsys.readouterr().out
    # a copy that does not verify is not used: the download is tried, and its failure named
    (tmp_path / "d" / babi.ARCHIVE_NAME).write_bytes(b"not an archive")
    with pytest.raises(babi.DownloadError, match="could not download"):
        babi.data_main(["--dest", str(tmp_path / "d"), "--sha256", digest])
    assert (tmp_path / "d" / babi.ARCHIVE_NAME).is_file()  # a folder the user had is left as it was


def test_a_failed_download_is_one_line_naming_the_url_the_error_and_the_way_offline(tmp_path, capsys, monkeypatch):
    """Without the network `memnet data babi` exited 1 (a SystemExit of its own) with '<urlopen error [Errno -2]
    ...>' and 'pass --archive', and left the empty --dest folder it made; it is exit 2, as every refusal of memnet's,
    the error as the socket gave it, the two ways to the data without the network, and no folder."""
    import urllib.error

    from memnet.cli import main

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(babi_archive.urllib.request, "urlopen", offline)
    monkeypatch.delenv(babi.DATA_DIR_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "babi", "--dest", str(tmp_path / "d")])
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and err[0] == f"downloading {babi.OFFICIAL_URL}" and len(err) == 2, err
    assert err[1] == (
        f"memnet data babi: could not download {babi.OFFICIAL_URL} ([Errno -2] Name or service not known); without "
        "the network, fetch tasks_1-20_v1-2.tar.gz where there is one and give it with --archive FILE (it is checked "
        "and extracted here), or set MEMNET_DATA_DIR to a folder holding it or its extracted tasks_1-20_v1-2/")
    assert not (tmp_path / "d").exists()


@needs_data
def test_shared_archive_checksum_is_known():
    assert "verified" in verify_archive(ARCHIVE)


def _damaged(tmp_path: Path, how: str) -> Path:
    data = bytearray(ARCHIVE.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # flipped bytes in the middle of the compressed stream
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path = tmp_path / f"{how}-{babi.ARCHIVE_NAME}"
    path.write_bytes(bytes(data))
    return path


@needs_data
@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_archive_is_named_and_never_half_extracted(tmp_path, how):
    damaged = _damaged(tmp_path, how)
    dest = tmp_path / "dest"
    with pytest.raises(babi.CorruptArchiveError, match=rf"{how}-tasks_1-20_v1-2.tar.gz: sha256 \w+ is not the official"):
        babi.data_main(["--archive", str(damaged), "--dest", str(dest)])
    # vouched for by its own checksum, it still fails while reading, and nothing is left behind
    with pytest.raises(babi.CorruptArchiveError, match=rf"{how}-tasks_1-20_v1-2.tar.gz: the archive is truncated or corrupt"):
        babi.data_main(["--archive", str(damaged), "--dest", str(dest), "--sha256", babi.sha256_file(damaged)])
    assert list(dest.iterdir()) == []  # no folder, no staging folder, no copy of the bad archive


@needs_data
@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_reading_a_damaged_archive_names_it(tmp_path, how):
    """Flipped bytes after the files read were not noticed (task 20 loaded), and before them the files past
    the flip were reported absent (a flip at a tenth of the archive: "en/qa4_..., ... absent")."""
    damaged = _damaged(tmp_path, how)
    with pytest.raises(babi.CorruptArchiveError, match=rf"{how}-tasks_1-20_v1-2.tar.gz: the archive is truncated"):
        load_babi(data_dir=damaged, cache_dir=tmp_path / "cache", tasks=[20])


# ----------------------------------------------------------------------------- the table


def test_babi_table_markdown_and_csv():
    results = {"MemN2N": {t: (10.0 if t in (2, 3) else 1.0) for t in babi.ALL_TASKS},
               "per-task": {1: 0.5, 2: 20.0}}
    markdown, csv = babi_table(results)
    lines = markdown.splitlines()
    assert lines[0] == "| task | MemN2N | per-task |"
    assert len(lines) == 2 + 20 + 2
    assert lines[2] == "| 1: single-supporting-fact | 1.0 | 0.5 |"
    assert lines[4] == "| 3: three-supporting-facts | 10.0 | – |"
    assert lines[-2] == "| mean error (%) | 1.9 | 10.2 (2 tasks) |"
    assert lines[-1] == "| failed tasks (> 5%) | 2 | 1 (2 tasks) |"
    rows = csv.splitlines()
    assert rows[0] == "task,MemN2N,per-task" and rows[3] == "3: three-supporting-facts,10.0,"
    assert rows[-2] == "mean error (%),1.9,10.2 (2 tasks)"
    one = babi_table({"task 1": {1: 82.7}})[0].splitlines()  # a run of babi_task_1k.yaml: one task, not "1 tasks"
    assert one[-2:] == ["| mean error (%) | 82.7 (1 task) |", "| failed tasks (> 5%) | 1 (1 task) |"]
    near = babi_table({"m": {1: 5.04, 2: 5.0, 3: 4.96}})[1].splitlines()  # 5.04 fails: not shown as "5.0"
    assert near[1].endswith(",5.04") and near[2].endswith(",5.0") and near[3].endswith(",5.0")
    piped = babi_table({"a|b": {1: 0.5}})[0].splitlines()  # a run's name with a pipe stays one column
    assert piped[0] == "| task | a\\|b |" and piped[0].replace("\\|", "").count("|") == piped[1].count("|")


def test_table_command_reads_saved_results(tmp_path, capsys):
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps({"A": {"1": 3.0, "2": 7.0}}))
    table_command.table_main(["--results", str(saved), "--csv", str(tmp_path / "t.csv"), "--markdown", str(tmp_path / "t.md")])
    assert "| 2: two-supporting-facts | 7.0 |" in capsys.readouterr().out
    assert (tmp_path / "t.csv").read_text().splitlines()[2] == "2: two-supporting-facts,7.0"
    with pytest.raises(SystemExit):
        table_command.table_main([])


def test_table_command_killed_while_writing_leaves_the_earlier_tables_whole(tmp_path, monkeypatch, capsys):
    """--markdown, --csv and --json were written in place: a kill halfway left a table of half the tasks, which read
    as a valid one, and a --json that --results (and the suite) then refused as damaged."""
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps({"A": {"1": 3.0, "2": 7.0}}))
    outputs = {"--markdown": tmp_path / "t.md", "--csv": tmp_path / "t.csv", "--json": tmp_path / "t.json"}
    argv = ["--results", str(saved), *[str(item) for option, path in outputs.items() for item in (option, path)]]
    table_command.table_main(argv)
    before = {path: path.read_text() for path in outputs.values()}
    write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    saved.write_text(json.dumps({"A": {"1": 3.0, "2": 7.0, "3": 1.0}}))
    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        table_command.table_main(argv)
    monkeypatch.undo()
    assert {path: path.read_text() for path in outputs.values()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.csv", "t.json", "t.md"]


def test_a_table_path_that_is_a_folder_is_named_not_the_file_written_beside_it(tmp_path, monkeypatch, capsys):
    """Written through a .partial file renamed into place, the error named that file: "cannot use
    .t.md.4242.partial: Is a directory"; it names the path given."""
    from memnet.cli import main as memnet_main

    monkeypatch.chdir(tmp_path)
    Path("r.json").write_text(json.dumps({"A": {"1": 3.0}}))
    Path("t.md").mkdir()
    with pytest.raises(SystemExit) as exit_status:
        memnet_main(["babi-table", "--results", "r.json", "--markdown", "t.md"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip() == "memnet: cannot use t.md: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.md"]


def test_table_command_refuses_saved_results_that_overlap_or_name_no_task(tmp_path, capsys):
    first, second, odd = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    first.write_text(json.dumps({"A": {"1": 3.0, "2": 7.0}}))
    second.write_text(json.dumps({"A": {"2": 50.0}, "B": {"2": 1.0}}))  # A's task 2 replaced 7.0 unseen
    with pytest.raises(SystemExit):
        table_command.table_main(["--results", str(first), "--results", str(second)])
    assert "the column 'A' already holds task(s) 2" in capsys.readouterr().err
    for errors, message in (({"21": 3.0}, "has task 21, expected tasks 1-20"),
                            ({"0": 3.0}, "has task 0, expected tasks 1-20"),
                            ({"3": 140.0}, "error 140.0 is not a percentage"),
                            ({"1": 3.0, "01": 90.0}, r"column 'A' names a task twice \('1', '01'\)")):
        odd.write_text(json.dumps({"A": errors}))
        with pytest.raises(RebuildError, match=message):
            table_command.read_results(odd)
    # a key twice in one object, which json.loads takes as its last value: task 1 was 90.0, the 3.0 dropped unseen
    for text in ('{"A": {"1": 3.0, "1": 90.0}}', '{"A": {"1": 3.0}, "A": {"2": 4.0}}'):
        odd.write_text(text)
        with pytest.raises(RebuildError, match="is given twice in one object"):
            table_command.read_results(odd)


def test_table_command_names_a_results_file_that_is_no_text(tmp_path, capsys):
    """A checkpoint given as --results stopped with codecs' UnicodeDecodeError traceback."""
    binary = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, binary)
    with pytest.raises(RebuildError, match=rf"{binary.name}: not a JSON text file \(byte \d+ is no UTF-8 text\)"):
        table_command.read_results(binary)


def test_task_errors_from_metrics():
    metrics = {"test/task_2/error": torch.tensor(4.0), "test/task_10/error": 1.5, "test/error": 3.0,
               "val/task_1/error": 9.0}
    assert task_errors(metrics) == {2: 4.0, 10: 1.5}


# ----------------------------------------------------------------------------- the QA module


class _Lookup(torch.nn.Module):
    """Answers with the class written in the first token of the query (a perfect or wrong oracle)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.classes = classes

    def forward(self, story, query):
        return torch.nn.functional.one_hot(query[:, 0], self.classes).float() * self.scale


def test_qa_module_logs_error_per_task():
    from memnet.lightning import QAModule

    # task 1: all right; task 2: 2 of 4 wrong; task 5: all wrong
    answers = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 2])
    guesses = torch.tensor([0, 1, 2, 0, 1, 0, 2, 1, 0])
    tasks = torch.tensor([1, 1, 1, 2, 2, 2, 2, 5, 5])
    batches = [{"story": torch.ones(len(i), 2, 3, dtype=torch.long), "query": guesses[i, None],
                "answer": answers[i], "task": tasks[i]} for i in (torch.arange(0, 4), torch.arange(4, 9))]
    module = QAModule(_Lookup(3))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    metrics = trainer.callback_metrics
    assert float(metrics["test/task_1/error"]) == pytest.approx(0.0)
    assert float(metrics["test/task_2/error"]) == pytest.approx(50.0)
    assert float(metrics["test/task_5/error"]) == pytest.approx(100.0)
    assert "test/task_3/error" not in metrics
    assert float(metrics["test/error"]) == pytest.approx(100 * 4 / 9)
    assert float(metrics["test/mean_task_error"]) == pytest.approx(50.0)
    assert float(metrics["test/failed_tasks"]) == 2
    # the mean and the failed count are over the 3 tasks present, not bAbI's 20: the log says how many
    assert float(metrics["test/tasks_measured"]) == 3


def test_qa_validation_without_task_numbers_logs_the_totals_only():
    from memnet.lightning import QAModule

    answers, guesses = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 0, 0, 2])
    batches = [{"story": torch.ones(len(i), 2, 3, dtype=torch.long), "query": guesses[i, None], "answer": answers[i]}
               for i in (torch.arange(0, 3), torch.arange(3, 5))]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    metrics = trainer.validate(QAModule(_Lookup(3)), dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                               verbose=False)[0]
    assert metrics["val/error"] == pytest.approx(40.0) and metrics["val/accuracy"] == pytest.approx(0.6)
    assert not [key for key in metrics if "task" in key]


class _Fixed(torch.nn.Module):
    """Answers with fixed logits, in their dtype (a bf16-true network's)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=logits.dtype))
        self.logits = logits

    def forward(self, story, query):
        return self.logits * self.scale


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_qa_loss_is_computed_in_float32_whatever_the_dtype_of_the_logits(reduction):
    """bfloat16 answer logits (bf16-true) gave a loss per question up to 0.7% off that of the same logits in
    float64: the cross-entropy was taken in bfloat16."""
    from memnet.lightning import QAModule

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 13, generator=g) * 3).bfloat16()
    answer = torch.randint(0, 13, (64,), generator=g)
    batch = {"story": torch.ones(64, 2, 3, dtype=torch.long), "query": torch.ones(64, 1, dtype=torch.long),
             "answer": answer, "task": torch.ones(64, dtype=torch.long)}
    loss = QAModule(_Fixed(logits), loss_reduction=reduction).model_step(batch, "val")
    exact = torch.nn.functional.cross_entropy(logits.double(), answer, reduction=reduction).item()
    assert loss.item() == pytest.approx(exact, rel=1e-6)


def test_qa_module_rejects_bad_reduction():
    from memnet.lightning import QAModule

    with pytest.raises(ValueError, match="loss_reduction must be 'mean' or 'sum'"):
        QAModule(_Lookup(3), loss_reduction="max")


@needs_data
def test_table_command_evaluates_a_trained_checkpoint(tmp_path, monkeypatch, capsys):
    """`memnet fit` a few steps on two tasks, then `memnet babi-table` on its checkpoint."""
    from memnet.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "memn2n" / "babi_task_1k.yaml"
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",  # babi-table tests the whole split
          "--trainer.logger=false", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path / 'run'}", f"--checkpoint.dirpath={tmp_path / 'run' / 'checkpoints'}",
          f"--data.init_args.data_dir={ARCHIVE}",
          f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.tasks=[1, 6]"])
    checkpoint = Path(json.loads((tmp_path / "runs" / "latest.json").read_text())["last_checkpoint"])
    assert checkpoint.resolve() == (tmp_path / "run" / "checkpoints" / "last.ckpt").resolve()  # the dirpath given
    assert checkpoint.is_file() and (tmp_path / "run" / "config.yaml").is_file()
    capsys.readouterr()
    main(["babi-table", "--ckpt_path", str(checkpoint), "--name", "tiny", "--csv", str(tmp_path / "t.csv"),
          "--json", str(tmp_path / "single.json")])
    out = capsys.readouterr().out
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "task,tiny"
    errors = {int(row.split(":")[0]): row.split(",")[-1] for row in rows[1:21]}
    assert errors[3] == "" and 0.0 <= float(errors[1]) <= 100.0 and 0.0 <= float(errors[6]) <= 100.0
    assert "| 1: single-supporting-fact |" in out and "(2 tasks)" in out
    # an ensemble of the checkpoint with itself answers as the checkpoint does: `predict` scores the questions
    # that `test` scored, every one of them (a partial or reordered split would change the errors)
    main(["babi-table", "--ensemble", "twice", "--ckpt_path", str(checkpoint), "--ckpt_path", str(checkpoint),
          "--json", str(tmp_path / "ensemble.json")])
    single = json.loads((tmp_path / "single.json").read_text())["tiny"]
    ensemble = json.loads((tmp_path / "ensemble.json").read_text())["twice"]
    assert set(ensemble) == {"1", "6"} and ensemble == pytest.approx(single, abs=1e-4)  # one question of 1,000 is 0.1
    # the words of its columns, which an ensemble compares: the config answers over the whole vocabulary
    words = table_command.predict_checkpoint(checkpoint)["words"]
    assert words[:12] == ("<pad>", "<unk>", "<eos>", "<eoq>", "bathroom", "bedroom", "garden", "hallway", "kitchen",
                          "no", "office", "yes")  # the specials, then tasks 1 and 6's answers
    # the run's config with another data seed: the same test file, the same errors (it was refused as a resume)
    (tmp_path / "seed3.yaml").write_text(f"extends: {tmp_path / 'run' / 'config.yaml'}\ndata:\n  init_args:\n    seed: 3\n")
    main(["babi-table", "--ckpt_path", str(checkpoint), "--name", "tiny", "--config", str(tmp_path / "seed3.yaml"),
          "--json", str(tmp_path / "seed3.json")])
    assert json.loads((tmp_path / "seed3.json").read_text())["tiny"] == single


@needs_data
@pytest.mark.parametrize("workers", [0, 2])
def test_a_memn2n_run_resumed_mid_epoch_ends_as_the_unbroken_run_and_logs_its_whole_epoch(tmp_path, monkeypatch,
                                                                                          workers):
    """8 steps (2 epochs of 4 batches) in one go, and 6 + 2 through a checkpoint written in the middle of the second
    epoch: the resumed epoch takes its remaining batches (it took its first ones again), on the epoch's shuffle
    (Lightning set the next epoch's), with the random noise where it was (it restarted from the seed), so the
    weights are the same bit for bit and the epoch's logged training values cover all its batches. With loader
    workers too, whose seeds the checkpoint keeps (the loader's generator state)."""
    from memnet.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "memn2n" / "babi_task_1k.yaml"
    monkeypatch.chdir(tmp_path)
    common = ["fit", "--config", str(config), "--trainer.enable_progress_bar=false", "--trainer.limit_train_batches=4",
              "--trainer.limit_val_batches=1", "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
              f"--data.init_args.data_dir={ARCHIVE}", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
              "--data.init_args.tasks=[1, 6]", f"--data.init_args.num_workers={workers}"]
    main([*common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'whole'}",
          "--trainer.logger.init_args.save_dir=whole"])
    main([*common, "--trainer.max_steps=6", f"--checkpoint.dirpath={tmp_path / 'halves'}",
          "--trainer.logger.init_args.save_dir=first"])
    main([*common, "--trainer.max_steps=8", f"--checkpoint.dirpath={tmp_path / 'halves'}",
          "--trainer.logger.init_args.save_dir=second", "--ckpt_path", str(tmp_path / "halves" / "last.ckpt")])
    whole, halves = (torch.load(tmp_path / name / "last.ckpt", weights_only=False) for name in ("whole", "halves"))
    assert whole["global_step"] == halves["global_step"] == 8
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, halves["state_dict"][name]), name
    loaders = [checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] for checkpoint in (whole, halves)]
    assert torch.equal(loaders[0][0]["now"], loaders[1][0]["now"])  # the workers' seeds drawn as the unbroken run's

    def epoch_values(folder: str) -> dict[str, str]:
        rows = [line.split(",") for line in next((tmp_path / folder).rglob("metrics.csv")).read_text().splitlines()]
        keys = [k for k in rows[0] if k.startswith("train/") and not k.endswith("_step")]
        row = next(dict(zip(rows[0], r)) for r in rows[1:] if dict(zip(rows[0], r))["epoch"] == "1"
                   and dict(zip(rows[0], r))["train/loss_epoch"])
        return {key: row[key] for key in keys}

    unbroken, resumed = epoch_values("whole"), epoch_values("second")
    assert {"train/error_epoch", "train/task_1/error", "train/task_6/error"} <= set(unbroken)
    assert resumed == unbroken


def test_memn2n_random_noise_state_round_trips_and_a_checkpoint_without_it_still_loads():
    from memnet.lightning import QAModule
    from memnet.models.memn2n import MemN2N

    def module() -> QAModule:
        return QAModule(MemN2N(30, 5, memory_size=20, seed=3))

    first = module()
    present = torch.ones(8, 20, dtype=torch.bool)
    present[:, 15:] = False
    first.net.time_indices(present, first.net._rn_generator())
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    unbroken = first.net.time_indices(present, first.net._rn_generator())
    resumed = module()
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(resumed.net.time_indices(present, resumed.net._rn_generator()), unbroken)
    fresh = module()
    fresh.on_load_checkpoint({})  # a checkpoint from before the state was kept: the seed's draws
    assert not torch.equal(fresh.net.time_indices(present, fresh.net._rn_generator()), unbroken)


@pytest.mark.parametrize("value, expected", [
    ("", "MEMNET_DATA_DIR is set but empty"),
    ("{tmp}/absent", "MEMNET_DATA_DIR={tmp}/absent does not exist"),
    ("{tmp}/file.txt", "MEMNET_DATA_DIR={tmp}/file.txt is a file"),
    ("{tmp}", "MEMNET_DATA_DIR={tmp}: no bAbI data in {tmp}"),
])
def test_a_bad_data_dir_variable_is_reported_not_replaced(tmp_path, monkeypatch, value, expected):
    (tmp_path / "file.txt").write_text("not data")
    monkeypatch.setenv(babi.DATA_DIR_ENV, value.format(tmp=tmp_path))
    with pytest.raises(babi.BabiDataDirError) as info:
        babi.find_source(None)  # the shared copy exists; it must not be used instead
    assert str(info.value).startswith(expected.format(tmp=tmp_path))
    if value in ("", "{tmp}/file.txt"):
        with pytest.raises(babi.BabiDataDirError, match=expected.format(tmp=tmp_path).split("=")[0]):
            babi.data_main(["--archive", str(tmp_path / "file.txt")])


@needs_data
def test_malformed_file_and_bad_data_dir_through_the_command_are_one_line(tmp_path, monkeypatch, capsys):
    from memnet.cli import main

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / babi.ARCHIVE_TOP / "en"
    folder.mkdir(parents=True)
    (folder / "qa1_single-supporting-fact_train.txt").write_text("1 Mary went home.\n2 Where is Mary? home 1\n")
    (folder / "qa1_single-supporting-fact_test.txt").write_text("1 Mary went home.\n2 Where is Mary?\thome\t1\n")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "memn2n" / "babi_task_1k.yaml")
    for setting, expected in ((str(tmp_path / "data"), "qa1_single-supporting-fact_train.txt, line 2: "),
                              ("", "MEMNET_DATA_DIR is set but empty")):
        monkeypatch.setenv(babi.DATA_DIR_ENV, setting)
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", config, "--trainer.fast_dev_run=true", "--trainer.logger=false",
                  f"--data.init_args.cache_dir={tmp_path / 'cache'}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        assert expected in next(line for line in err.splitlines() if line.startswith("memnet: "))


def test_table_columns_of_two_runs_with_one_name_stay_apart(tmp_path):
    from memnet.cli.babi_table import checkpoint_names

    paths = []
    for experiment in ("memn2n", "memn2n_big"):
        checkpoint = tmp_path / experiment / "seed_0" / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
        paths.append(str(checkpoint))
    assert checkpoint_names(paths) == ["memn2n/seed_0", "memn2n_big/seed_0"]  # were both "seed_0", one lost
    assert checkpoint_names(paths[:1]) == ["seed_0"]


def test_a_resume_with_another_split_is_refused():
    from memnet.utils import MemnetError

    state = BabiDataModule(tasks=[1], seed=0).state_dict()
    BabiDataModule(tasks=[1], seed=0).load_state_dict(state)
    BabiDataModule(tasks=[1]).load_state_dict({})  # a checkpoint from before the state was kept
    for kwargs, message in (({"seed": 1}, "data seed 1 given, but the checkpoint was trained with 0"),
                            ({"val_holdout": "question"}, "val_holdout 'question' given")):
        with pytest.raises(MemnetError, match=message):
            BabiDataModule(tasks=[1], **kwargs).load_state_dict(state)


@pytest.mark.parametrize("stage", ["test", "validate", "predict"])
def test_a_checkpoint_is_scored_whatever_its_data_seed_but_not_on_other_files(stage):
    """`memnet babi-table --config C` with another data seed was refused as a resume ("resuming continues its split
    of the training questions; pass --data.init_args.seed 0, or start a new run", an option babi-table does not
    take), though the test split is the test file whatever the seed. Outside a fit the split keys are not
    checked; other files still are, with a message for scoring (their vocabulary is the model's)."""
    from types import SimpleNamespace

    from memnet.utils import MemnetError

    state = BabiDataModule(tasks=[1, 6], seed=0).state_dict()
    for kwargs in ({"seed": 3}, {"val_holdout": "question", "val_fraction": 0.2}):
        scored = BabiDataModule(tasks=[1, 6], **kwargs)
        scored.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
        scored.load_state_dict(state)
        scored.trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))  # a resume still continues one split
        with pytest.raises(MemnetError, match="resuming continues its split of the training questions"):
            scored.load_state_dict(state)
    other_files = BabiDataModule(tasks=[1], seed=0)
    other_files.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
    with pytest.raises(MemnetError, match=r"^data tasks \[1\] given, but the checkpoint was trained with \[1, 6\]: "
                                          r"its model reads the vocabulary of those bAbI files; score it with "
                                          r"data.init_args.tasks \[1, 6\] in its config$"):
        other_files.load_state_dict(state)


def test_a_resume_with_other_bAbI_files_is_refused():
    from memnet.utils import MemnetError

    # the 1k set was resumed on the 10k one (282 steps an epoch where it trained 29), exit 0
    state = BabiDataModule(tasks=[1, 3], size="10k", train_1k_tasks=[3]).state_dict()
    BabiDataModule(tasks=[3, 1], size="10k", train_1k_tasks=[3]).load_state_dict(state)
    old = {"seed": 0, "val_fraction": 0.1, "val_holdout": "story"}  # a checkpoint from before these were kept
    BabiDataModule(tasks=[2], size="10k", language="hn").load_state_dict(old)
    for kwargs, message in (
        ({"tasks": [1, 3], "train_1k_tasks": [3]}, "data size '1k' given, but the checkpoint was trained with '10k'"),
        ({"tasks": [1, 2, 3], "size": "10k", "train_1k_tasks": [3]}, r"data tasks \[1, 2, 3\] given, .* \[1, 3\]"),
        ({"tasks": [1, 3], "size": "10k", "train_1k_tasks": [3], "language": "hn"}, "data language 'hn' given"),
        ({"tasks": [1, 3], "size": "10k"}, r"data train_1k_tasks \[\] given, .* \[3\]: .*--data.init_args.train_1k_tasks \[3\]"),
    ):
        with pytest.raises(MemnetError, match=message):
            BabiDataModule(**kwargs).load_state_dict(state)


def _answers(probabilities, answer, task):
    return {"probabilities": torch.tensor(probabilities), "answer": torch.tensor(answer), "task": torch.tensor(task)}


def test_an_ensemble_answers_with_the_mean_of_its_models_probabilities():
    from memnet.cli.babi_table import ensemble_task_errors

    # 4 questions (tasks 1, 1, 2, 2; true classes 0, 1, 2, 0), 3 answer classes, two models
    first = _answers([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]], [0, 1, 2, 0], [1, 1, 2, 2])
    second = _answers([[0.3, 0.7, 0.0], [0.1, 0.2, 0.7], [0.0, 0.3, 0.7], [0.9, 0.0, 0.1]], [0, 1, 2, 0], [1, 1, 2, 2])
    # means: [.45, .55, 0] wrong (1 for 0); [.1, .55, .35] right; [.25, .15, .6] right; [.55, .4, .05] right
    assert ensemble_task_errors([first, second]) == {1: 50.0, 2: 0.0}
    # alone, the first model is wrong on question 4 and ties on 3 (arg-max takes class 0: wrong)
    assert ensemble_task_errors([first, first]) == {1: 0.0, 2: 100.0}
    nan = _answers([[float("nan")] * 3, [0.1, 0.9, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [0, 1, 2, 0], [1, 1, 2, 2])
    assert ensemble_task_errors([nan, second])[1] == 50.0  # a NaN answer is wrong, not class 0


def test_an_ensemble_refuses_models_asked_other_questions():
    from memnet.cli.babi_table import ensemble_task_errors
    from memnet.cli.rebuild import RebuildError

    first = _answers([[0.6, 0.4], [0.1, 0.9]], [0, 1], [1, 1])
    with pytest.raises(RebuildError, match="at least two checkpoints, got 1"):
        ensemble_task_errors([first])
    with pytest.raises(RebuildError, match="b.ckpt was tested on other questions"):
        ensemble_task_errors([first, _answers([[0.6, 0.4], [0.1, 0.9]], [0, 0], [1, 1])], ["a.ckpt", "b.ckpt"])
    with pytest.raises(RebuildError, match=r"b.ckpt answered \(2, 3\).*answer vocabulary"):
        ensemble_task_errors([first, _answers([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0]], [0, 1], [1, 1])], ["a.ckpt", "b.ckpt"])


def test_an_ensemble_refuses_models_whose_columns_name_other_words():
    from memnet.cli.babi_table import column_words, ensemble_task_errors

    vocabulary = Vocabulary.build(["kitchen", "garden", "office"], ["mary", "went", "to", "the"])
    renamed = Vocabulary.build(["kitchenette", "garden", "office"], ["mary", "went", "to", "the"])
    assert column_words(vocabulary, 3) == ("garden", "kitchen", "office")  # answer classes only
    assert column_words(vocabulary, len(vocabulary) + 5) == vocabulary.tokens  # answer_layer: vocabulary
    # the same questions, answers and sizes (kitchenette sorts where kitchen did): once averaged as if they agreed
    first = {**_answers([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0]], [0, 1], [1, 1]), "words": column_words(vocabulary, 3)}
    second = {**_answers([[0.3, 0.7, 0.0], [0.1, 0.2, 0.7]], [0, 1], [1, 1]), "words": column_words(renamed, 3)}
    with pytest.raises(RebuildError, match=r"^b.ckpt and a.ckpt have other vocabularies: their answer class 1 is "
                                           r"'kitchenette' in b.ckpt, 'kitchen' in a.ckpt; an ensemble averages"):
        ensemble_task_errors([first, second], ["a.ckpt", "b.ckpt"])
    wide = [{**answers, "words": column_words(vocab, 3 + 100)} for answers, vocab in ((first, vocabulary),
                                                                                       (second, renamed))]
    with pytest.raises(RebuildError, match="their vocabulary word 5 is 'kitchenette'"):
        ensemble_task_errors(wide, ["a.ckpt", "b.ckpt"])
    assert ensemble_task_errors([first, {**second, "words": first["words"]}]) == {1: 50.0}  # one vocabulary: averaged
    assert ensemble_task_errors([first, {key: value for key, value in second.items() if key != "words"}]) == {1: 50.0}


@pytest.mark.parametrize("argv, expected", [
    (["--ensemble", "e", "--ckpt_path", "a.ckpt"], "--ensemble needs at least two --ckpt_path, got 1"),
    (["--ensemble", "e", "--ckpt_path", "a.ckpt", "--ckpt_path", "b.ckpt", "--name", "x", "--name", "y"],
     "with --ensemble the checkpoints fill the one column"),
    (["--ensemble", " ", "--ckpt_path", "a.ckpt", "--ckpt_path", "b.ckpt"], "--ensemble needs a column name"),
])
def test_table_command_refuses_a_malformed_ensemble(argv, expected, capsys):
    from memnet.cli.babi_table import table_main

    with pytest.raises(SystemExit) as exit_info:
        table_main(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


@needs_data
@pytest.mark.parametrize("stage", ["test", "predict"])
def test_a_checkpoint_of_a_ddp_run_is_scored_in_one_process(tmp_path, monkeypatch, stage):
    """babi-table and the suite's evaluations score a checkpoint in their own process on one device, whatever
    strategy its run trained with: under DDP each process would score a share of the questions (repeating the
    last ones), `predict` would return the first share only, and the launcher would start the command again."""
    from memnet.cli import rebuild

    base = Path(__file__).resolve().parents[1] / "configs" / "memn2n" / "babi_task_1k.yaml"
    config = tmp_path / "config.yaml"
    config.write_text(f"extends: {base}\ntrainer:\n  accelerator: cpu\n  strategy: ddp\n  devices: 2\n")
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"not read: the trainer is inspected before the stage runs")
    built, real = [], rebuild.instantiate

    class Built(Exception):
        pass

    def instantiate(configs, overrides=()):
        built.append(real(configs, overrides))
        raise Built

    monkeypatch.setattr(rebuild, "instantiate", instantiate)
    monkeypatch.setattr(table_command, "instantiate", instantiate)
    with pytest.raises(Built):
        if stage == "test":
            rebuild.run_stage("test", checkpoint, config)
        else:
            table_command.predict_checkpoint(checkpoint, config)
    trainer = built[0].trainer
    assert trainer.world_size == 1 and trainer.num_devices == 1
    assert type(trainer.strategy).__name__ == "SingleDeviceStrategy"
    # the same config as it is builds the two-process trainer that the scoring would otherwise run under
    assert real([config]).trainer.num_devices == 2


@needs_data
def test_the_vocabulary_is_written_as_every_other_file_and_clears_a_killed_writers_leftover(tmp_path):
    """vocabulary.json had a writer of its own (.<name>.<pid>.partial, never cleaned up, left behind by a failed
    write too); it is written as memnet's other files are (memnet.utils.write_text_atomic)."""
    import subprocess
    import sys
    import time

    from memnet import utils

    module = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=[1], memory_size=20)
    folder = babi.data.cache_folder(module.dataset)  # the dataset's cache, before the vocabulary
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    then = time.time() - utils.STALE_PARTIAL_AGE - 60
    leftovers = [folder / f".vocabulary.json.{utils._HOST}.{dead}.partial",
                 folder / f".encoded-test-memory20.npz.{utils._HOST}.{dead}.partial"]
    for leftover in leftovers:
        leftover.write_text("{")
        os.utime(leftover, (then, then))
    vocabulary = module.vocabulary
    stored = json.loads((folder / "vocabulary.json").read_text())
    assert stored == {"tokens": list(vocabulary.tokens), "num_answers": vocabulary.num_answers}
    module.setup("test")  # the encoded split, written once
    assert (folder / "encoded-test-memory20.npz").is_file()
    assert not list(folder.glob(".*.partial")) and not list(folder.glob(".*.npz"))  # the leftovers removed, none left
    again = BabiDataModule(data_dir=str(ARCHIVE), cache_dir=str(tmp_path), tasks=[1], memory_size=20)
    again.setup("test")  # read back from the file written
    written, read = module.split("test").arrays, again.split("test").arrays
    assert written.keys() == read.keys() and all((written[key] == read[key]).all() for key in written)
