"""memnet.utils: the partial files a killed writer leaves, read and removed by one rule from both of its callers
(a write of one file, ``write_text_atomic`` or ``write_file_atomic``; a checkpoint save, ``remove_stale_partials_in(folder)``)."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memnet import utils
from memnet.utils import (
    LEGACY_PARTIAL_AGE,
    STALE_PARTIAL_AGE,
    PartialName,
    read_partial_name,
    remove_stale_partials_in,
    write_file_atomic,
    write_text_atomic,
)

HOUR, MINUTES = LEGACY_PARTIAL_AGE + 60, STALE_PARTIAL_AGE + 60  # just older than each age


def _dead_pid() -> int:
    """A pid no process has here (a child that ended)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                             check=True)
    return int(process.stdout)


def _written_ago(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _clean(folder: Path, entry: str) -> None:
    """Clean ``folder`` up as each caller does: a write of ``weights`` there, or a checkpoint save's whole folder."""
    if entry == "write":
        write_text_atomic(folder / "weights", "{}")
    else:
        remove_stale_partials_in(folder)


# Each naming, read alike by both callers: the target, "weights", has no dot, so even without its name the
# folder's cleanup cannot read .weights.<pid>.partial as another host's. (writer, age, removed?)
NAMINGS = {
    "this host's, dead, 5 minutes": ("{host}.{dead}", MINUTES, True),
    "this host's, dead, just written": ("{host}.{dead}", 60, False),  # a live writer in another pid namespace?
    "this host's, live, old": ("{host}.{live}", HOUR, False),
    "another host's, dead, old": ("other-node.{dead}", HOUR, False),
    "earlier pid naming, dead, an hour": ("{dead}", HOUR, True),
    "earlier pid naming, dead, 5 minutes": ("{dead}", MINUTES, False),
    "earlier pid naming, live, an hour": ("{live}", HOUR, False),  # was removed by a checkpoint save
    "no writer named, an hour": ("", HOUR, True),  # was kept by a write of the file
    "no writer named, 5 minutes": ("", MINUTES, False),
}


@pytest.mark.parametrize("entry", ["write", "folder"])
@pytest.mark.parametrize("case", list(NAMINGS))
def test_each_naming_is_removed_by_the_same_rule_from_both_callers(tmp_path, entry, case):
    writer, age, removed = NAMINGS[case]
    writer = writer.format(host=utils._HOST, dead=_dead_pid(), live=os.getppid())
    leftover = tmp_path / (f".weights.{writer}.partial" if writer else ".weights.partial")
    leftover.write_text("half")
    _written_ago(leftover, age)
    _clean(tmp_path, entry)
    assert leftover.exists() != removed, f"{leftover.name}, {age:.0f} s old: {'kept' if removed else 'removed'}"


@pytest.mark.parametrize("entry", ["write", "folder"])
@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_stale_partial_folder_or_link_goes_from_both_callers_never_what_a_link_points_to(tmp_path, entry, kind):
    """A write of one file removed only plain files (a sharded checkpoint's folder, a link, of its naming, stayed);
    a checkpoint save removed those too. Both remove them now, a link by its own time; what it points to stays."""
    leftover, pointed = tmp_path / f".weights.{utils._HOST}.{_dead_pid()}.partial", tmp_path / "kept.bin"
    pointed.write_text("someone's")
    if kind == "folder":
        leftover.mkdir()
        (leftover / "shard_0.distcp").write_text("half")
    else:
        leftover.symlink_to(pointed)
    _written_ago(leftover, MINUTES)
    _written_ago(pointed, 0)  # the link's own time counts, not this one
    _clean(tmp_path, entry)
    assert not leftover.exists() and not leftover.is_symlink()
    assert pointed.read_text() == "someone's"


def test_a_dotted_name_of_the_pid_naming_is_removed_by_a_write_of_it_kept_by_a_folder_cleanup(tmp_path):
    """Without the target's name, .record.json.<pid>.partial reads as record's of host json: a checkpoint save
    leaves it (another host's is never removed), as before; a write of record.json knows it for its own."""
    leftover = tmp_path / f".record.json.{_dead_pid()}.partial"
    leftover.write_text("half")
    _written_ago(leftover, HOUR)
    remove_stale_partials_in(tmp_path)
    assert leftover.exists()
    write_text_atomic(tmp_path / "record.json", "{}")
    assert not leftover.exists()


def test_a_folder_cleanup_leaves_this_processs_own_partial_files(tmp_path):
    """This process's own .<name>.<host>.<pid>.partial is a write under way (another thread's), however old."""
    own = tmp_path / f".other.json.{utils._HOST}.{os.getpid()}.partial"
    own.write_text("half")
    _written_ago(own, HOUR)
    remove_stale_partials_in(tmp_path)
    assert own.exists()


def test_a_write_leaves_other_files_partials(tmp_path):
    """A write of record.json reads only record.json's: not record's, not record.json.v2's."""
    dead = _dead_pid()
    others = [tmp_path / f".record.{utils._HOST}.{dead}.partial", tmp_path / ".record.partial",
              tmp_path / f".record.json.v2.{utils._HOST}.{dead}.partial", tmp_path / f".other.json.{dead}.partial"]
    for path in others:
        path.write_text("half")
        _written_ago(path, HOUR)
    write_text_atomic(tmp_path / "record.json", "{}")
    assert [path.name for path in others if not path.exists()] == []


@pytest.mark.parametrize(("name", "target", "read"), [
    (".last.ckpt.{host}.42.partial", None, PartialName("last.ckpt", "{host}", 42)),
    (".last.ckpt.{host}.42.partial", "last.ckpt", PartialName("last.ckpt", "{host}", 42)),
    (".a.b.c.42.partial", None, PartialName("a.b", "c", 42)),  # another host's, whichever the split
    (".a.b.c.42.partial", "a.b", PartialName("a.b", "c", 42)),
    (".a.b.42.partial", None, PartialName("a", "b", 42)),  # may be a.b's of pid 42: another host's is safer
    (".a.b.42.partial", "a.b", PartialName("a.b", None, 42)),
    (".weights.42.partial", None, PartialName("weights", None, 42)),
    (".epoch=0-step=2.ckpt.partial", None, PartialName("epoch=0-step=2.ckpt", None, None)),
    (".last.7.set.partial", None, PartialName("last.7.set", None, None)),  # replace_file_set's staging folder
    (".last.7.set.partial", "last", None),
    (".record.json.v2.partial", "record.json", None),
    (".record.partial", "record.json", None),
    ("record.json.partial", None, None),  # not hidden: no one's partial file
    (".partial", None, None),
    ("..partial", None, None),
])
def test_partial_names_are_read_with_or_without_the_target(name, target, read):
    host = utils._HOST
    if read is not None and read.host == "{host}":
        read = read._replace(host=host)
    assert read_partial_name(name.format(host=host), target) == read


def test_read_partial_name_examples():
    tests = doctest.DocTestFinder().find(read_partial_name, globs={"read_partial_name": read_partial_name})
    results = [doctest.DocTestRunner().run(test) for test in tests]
    assert sum(result.attempted for result in results) == 3 and sum(result.failed for result in results) == 0


def test_a_binary_write_lands_whole_or_not_at_all(tmp_path):
    """write_file_atomic hands the writer an open file (np.savez adds no suffix to it) and renames it onto the path;
    a writer that fails leaves the earlier file and no partial file."""
    path = tmp_path / "arrays.npz"
    write_file_atomic(path, lambda file: np.savez(file, x=np.arange(3)))
    with np.load(path) as stored:
        assert stored["x"].tolist() == [0, 1, 2]

    def fail(file):
        file.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_file_atomic(path, fail)
    with np.load(path) as stored:
        assert stored["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]
