"""Finding, checking and extracting the official bAbI archive (``tasks_1-20_v1-2.tar.gz``).

Where the data is looked for (first hit wins): ``data_dir`` of the data module, the
environment variable ``MEMNET_DATA_DIR``, ``data/babi`` under the working directory
(where ``memnet data babi`` puts it), ``shared/data/babi`` beside the repository.
In each folder the tarball, an extracted ``tasks_1-20_v1-2/`` or the language
folders themselves (``en/``, ...) are accepted. ``memnet data babi`` (:func:`data_main`)
fetches or copies the official archive, checks its sha256 and extracts it safely.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tasks.babi.parse import TASK_NAMES, BabiFormatError, check_tasks

ARCHIVE_NAME = "tasks_1-20_v1-2.tar.gz"
ARCHIVE_TOP = "tasks_1-20_v1-2"
OFFICIAL_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"
OFFICIAL_SHA256 = "0364ebde659f14d11bc21744516c5ec49d3d06cb692733f66680771244998898"
# Archives whose content is known: the official tarball, and a byte-stable repack of
# its en, en-10k (less qa3 train), hn and shuffled folders.
KNOWN_SHA256: dict[str, str] = {
    OFFICIAL_SHA256: "official tasks_1-20_v1-2.tar.gz",
    "b97dd5867899be8124afffe6a60cd037b2812eb95efa37ea547447aa1101e8e5": "repack of en, en-10k, hn, shuffled",
}
DEFAULT_DATA_DIR = Path("data") / "babi"
DATA_DIR_ENV = "MEMNET_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]


def task_file(task: int, split: Literal["train", "test"], *, language: str = "en", size: str = "1k") -> str:
    """Path of a task's file inside the distribution, e.g. ``en-10k/qa3_three-supporting-facts_train.txt``."""
    check_tasks([task])
    folder = language if size == "1k" else f"{language}-10k"
    return f"{folder}/qa{task}_{TASK_NAMES[task]}_{split}.txt"


class BabiSource:
    """The distribution, in a tarball or a folder; reads files by their relative path.

    Args:
        root: the ``.tar.gz``, the extracted ``tasks_1-20_v1-2`` folder, or a folder
            holding either of them.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        self.archive: Path | None = None
        self.folder: Path | None = None
        if root.is_file():
            self.archive = root
        elif (root / ARCHIVE_TOP).is_dir():
            self.folder = root / ARCHIVE_TOP
        elif (root / "en").is_dir() or (root / "hn").is_dir() or (root / "shuffled").is_dir():
            self.folder = root
        elif (root / ARCHIVE_NAME).is_file():
            self.archive = root / ARCHIVE_NAME
        else:
            raise FileNotFoundError(
                f"no bAbI data in {root}: expected {ARCHIVE_NAME}, a {ARCHIVE_TOP}/ folder or en/ inside it "
                "(run `memnet data babi` to fetch it)"
            )
        self._members: dict[str, tarfile.TarInfo] | None = None
        self._tar: tarfile.TarFile | None = None

    @property
    def location(self) -> Path:
        return self.archive if self.archive is not None else self.folder  # type: ignore[return-value]

    def _open(self) -> dict[str, tarfile.TarInfo]:
        if self._members is None:
            self._tar = tarfile.open(self.archive, "r:gz")  # noqa: SIM115 - kept open for reads, see close()
            self._members = {}
            for member in self._tar.getmembers():
                name = member.name.removeprefix("./")
                name = name.removeprefix(ARCHIVE_TOP + "/")
                if member.isfile():
                    self._members[name] = member
        return self._members

    def exists(self, relative: str) -> bool:
        if self.folder is not None:
            return (self.folder / relative).is_file()
        return relative in self._open()

    def read(self, relative: str) -> str:
        """The decoded text of ``relative``; a missing file is a ``FileNotFoundError`` naming it."""
        if not self.exists(relative):
            raise FileNotFoundError(f"{relative} is not in {self.location}")
        if self.folder is not None:
            data = (self.folder / relative).read_bytes()
        else:
            handle = self._tar.extractfile(self._open()[relative])  # type: ignore[union-attr]
            data = handle.read()  # type: ignore[union-attr]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BabiFormatError(f"{self.location}/{relative}", None, f"not UTF-8 text ({error})") from None

    def fingerprint(self, relatives: Sequence[str]) -> str:
        """Changes when the data changes: the archive's sha256, or the files' sizes and times."""
        if self.archive is not None:
            return sha256_file(self.archive)
        parts = []
        for relative in relatives:
            stat = (self.folder / relative).stat()  # type: ignore[operator]
            parts.append(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar, self._members = None, None


def candidate_data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where the data is looked for, in order (see the module docstring)."""
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    candidates.append(DEFAULT_DATA_DIR)
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "babi")
    return candidates


def find_source(data_dir: str | Path | None = None) -> BabiSource:
    """The first place holding the data; an explicit ``data_dir`` that does not is an error."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_dir {path} does not exist (expected {ARCHIVE_NAME} or a folder holding it)")
        return BabiSource(path)
    tried = []
    for candidate in candidate_data_dirs(None):
        tried.append(str(candidate))
        try:
            return BabiSource(candidate)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        "bAbI data not found; looked in " + ", ".join(tried)
        + f". Run `memnet data babi` or set data_dir / {DATA_DIR_ENV}."
    )


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder, or is a link or a device."""


def check_archive_members(archive: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    """Every member, after checking that none escapes ``target``; raises naming the first bad one.

    Refused: absolute names, ``..`` components, symbolic and hard links, devices,
    FIFOs, and any name that resolves outside ``target``.
    """
    root = target.resolve()
    members = archive.getmembers()
    for member in members:
        name = member.name
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract")
        if ".." in Path(name).parts or ".." in name.replace("\\", "/").split("/"):
            raise UnsafeArchiveError(f"archive member {name!r} points outside the target folder ('..'); refusing to extract")
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"archive member {name!r} is a link (to {member.linkname!r}); refusing to extract")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"archive member {name!r} is not a regular file or folder; refusing to extract")
        destination = (root / name).resolve()
        if destination != root and root not in destination.parents:
            raise UnsafeArchiveError(f"archive member {name!r} would be written outside {root}; refusing to extract")
    return members


def safe_extract(archive_path: str | Path, target: str | Path) -> Path:
    """Extract a ``.tar.gz`` into ``target`` after :func:`check_archive_members`; returns ``target``.

    Nothing is written unless every member is safe.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "r:*") as archive:
        members = check_archive_members(archive, target)
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            archive.extractall(target, members=members)
    return target


def verify_archive(path: str | Path, *, expected_sha256: str | None = None, official: bool = False) -> str:
    """The archive's sha256, checked against ``expected_sha256``, or the official one when ``official``.

    Returns a sentence saying what was verified. An archive whose checksum is
    unknown (not official, not the known repack, no ``expected_sha256``) is
    accepted with a warning in that sentence; its files are still parsed strictly.
    """
    digest = sha256_file(path)
    if expected_sha256 is not None:
        if digest != expected_sha256.lower():
            raise ValueError(f"{path}: sha256 {digest} does not match the expected {expected_sha256}")
        return f"sha256 {digest} matches the expected value"
    if official and digest != OFFICIAL_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the official archive's {OFFICIAL_SHA256}")
    if digest in KNOWN_SHA256:
        return f"sha256 {digest} verified ({KNOWN_SHA256[digest]})"
    return f"WARNING: sha256 {digest} is not a known bAbI archive; not verified"


def data_main(argv: Sequence[str] | None = None) -> Path:
    """``memnet data babi``: fetch (or take a local copy of) the archive, verify it, extract it safely."""
    parser = argparse.ArgumentParser(
        prog="memnet data babi",
        description="Fetch the bAbI v1.2 archive (or take a local file), check its sha256 and extract it safely.",
    )
    parser.add_argument("--dest", default=os.environ.get(DATA_DIR_ENV, str(DEFAULT_DATA_DIR)),
                        help=f"target folder (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    parser.add_argument("--archive", help=f"a local {ARCHIVE_NAME} to use instead of downloading")
    parser.add_argument("--url", default=OFFICIAL_URL, help="where to download from (default: the official URL)")
    parser.add_argument("--sha256", help="expected sha256 of the archive (default: known checksums)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    dest = Path(args.dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    stored = dest / ARCHIVE_NAME
    if args.archive:
        source = Path(args.archive).expanduser()
        if not source.is_file():
            parser.error(f"--archive {source} is not a file")
        message = verify_archive(source, expected_sha256=args.sha256)
        if source.resolve() != stored.resolve():
            shutil.copyfile(source, stored)
    else:
        partial = stored.with_name(stored.name + ".partial")
        print(f"downloading {args.url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(args.url, timeout=60) as response, open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise SystemExit(f"memnet data babi: could not download {args.url} ({error}); "
                             "download it yourself and pass --archive") from None
        try:
            message = verify_archive(partial, expected_sha256=args.sha256, official=args.url == OFFICIAL_URL)
        except ValueError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, stored)
    print(message)
    safe_extract(stored, dest)
    folder = dest / ARCHIVE_TOP
    count = sum(1 for _ in folder.rglob("*.txt")) if folder.is_dir() else 0
    print(f"extracted {count} text files to {folder}")
    return folder
