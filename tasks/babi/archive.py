"""Finding, checking and extracting the official bAbI archive (``tasks_1-20_v1-2.tar.gz``).

Where the data is looked for (first hit wins): ``data_dir`` of the data module, the
environment variable ``MEMNET_DATA_DIR`` (when set it must name a folder holding the
data; empty, missing, a file or without the data is an error naming it, not a reason
to look elsewhere), ``data/babi`` under the working directory
(where ``memnet data babi`` puts it), ``shared/data/babi`` beside the repository.
In each folder the tarball, an extracted ``tasks_1-20_v1-2/`` or the language
folders themselves (``en/``, ...) are accepted. ``memnet data babi`` (:func:`data_main`)
fetches or copies the official archive, checks its sha256 and extracts it safely.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
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
            members = {}
            try:
                # to the end first: a changed byte in the middle ended tarfile's member list there without an
                # error (the files after it "absent"), or passed unseen when the files read lay before it
                _read_gzip_to_the_end(self.archive)  # type: ignore[arg-type]
                self._tar = tarfile.open(self.archive, "r:gz")  # noqa: SIM115 - kept open for reads, see close()
                for member in self._tar.getmembers():
                    name = member.name.removeprefix("./")
                    name = name.removeprefix(ARCHIVE_TOP + "/")
                    if member.isfile():
                        members[name] = member
            except CORRUPT_ARCHIVE_ERRORS as error:
                self.close()
                raise self._corrupt(error) from None
            self._members = members
        return self._members

    def _corrupt(self, error: BaseException) -> CorruptArchiveError:
        return CorruptArchiveError(f"{self.archive}: the archive is truncated or corrupt "
                                   f"({type(error).__name__}: {error}); fetch it again with `memnet data babi`")

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
            try:
                handle = self._tar.extractfile(self._open()[relative])  # type: ignore[union-attr]
                data = handle.read()  # type: ignore[union-attr]
            except CORRUPT_ARCHIVE_ERRORS as error:
                raise self._corrupt(error) from None
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


def data_dir_from_env() -> Path | None:
    """The folder ``MEMNET_DATA_DIR`` names, or None when it is not set.

    Set, it must name an existing folder: an empty value, a missing folder or a
    file is an error naming the variable and its value, never silently replaced
    by another location.
    """
    if DATA_DIR_ENV not in os.environ:
        return None
    value = os.environ[DATA_DIR_ENV]
    expected = f"expected the folder holding {ARCHIVE_NAME} or {ARCHIVE_TOP}/ (or unset it)"
    if not value.strip():
        raise BabiDataDirError(f"{DATA_DIR_ENV} is set but empty; {expected}")
    path = Path(value).expanduser()
    if path.is_file():
        raise BabiDataDirError(f"{DATA_DIR_ENV}={value} is a file; {expected}")
    if not path.is_dir():
        raise BabiDataDirError(f"{DATA_DIR_ENV}={value} does not exist; {expected}")
    return path


class BabiDataDirError(FileNotFoundError):
    """Where the data should be is not usable; the message names the setting and its value."""


class DownloadError(OSError):
    """The archive could not be downloaded; the message names the URL, the error and how to do without."""

    def __init__(self, url: str, error: BaseException) -> None:
        reason = getattr(error, "reason", None) or error  # urllib's URLError wraps the socket's error
        super().__init__(
            f"could not download {url} ({reason}); without the network, fetch {ARCHIVE_NAME} where there is one "
            f"and give it with --archive FILE (it is checked and extracted here), or set {DATA_DIR_ENV} to a "
            f"folder holding it or its extracted {ARCHIVE_TOP}/")


def find_source(data_dir: str | Path | None = None) -> BabiSource:
    """The first place holding the data; an explicit ``data_dir`` or ``MEMNET_DATA_DIR`` that does not is an error."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_dir {path} does not exist (expected {ARCHIVE_NAME} or a folder holding it)")
        return BabiSource(path)
    from_env = data_dir_from_env()
    if from_env is not None:
        try:
            return BabiSource(from_env)
        except FileNotFoundError as error:
            raise BabiDataDirError(f"{DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]}: {error}") from None
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


CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)  # a truncated or flipped .tar.gz


class CorruptArchiveError(ValueError):
    """An archive that cannot be read to its end (truncated, or bytes changed)."""


def _read_gzip_to_the_end(path: Path) -> None:
    """Decompress a gzip file to its end, so its CRC is checked (tarfile stops at the end-of-archive
    marker and would not notice changed bytes that still inflate); other files are left alone."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 20):
            pass


def _move_into(staging: Path, target: Path) -> None:
    """Move every file under ``staging`` to the same place under ``target``, replacing only those files.

    Folders are merged, not replaced, so a file the user added to an extracted folder is kept
    (a re-extraction replaced the whole ``tasks_1-20_v1-2/`` and lost it). A folder where the
    archive has a file, or anything else where it has a folder, is refused (``ValueError``
    naming it) before anything moves: replacing it would delete what it holds.
    """
    files = sorted(path for path in staging.rglob("*") if not path.is_dir())
    folders = sorted(path for path in staging.rglob("*") if path.is_dir())
    for path in files + folders:
        destination = target / path.relative_to(staging)
        if not destination.exists() and not destination.is_symlink():
            continue
        if path.is_dir() and (destination.is_symlink() or not destination.is_dir()):
            raise ValueError(f"{destination} is in the way of the archive's folder of that name; "
                             "move it away and run again (nothing was extracted)")
        if not path.is_dir() and destination.is_dir() and not destination.is_symlink():
            raise ValueError(f"{destination} is a folder where the archive has a file; "
                             "move it away and run again (nothing was extracted)")
    for path in folders:
        (target / path.relative_to(staging)).mkdir(parents=True, exist_ok=True)
    for path in files:
        os.replace(path, target / path.relative_to(staging))


def safe_extract(archive_path: str | Path, target: str | Path) -> Path:
    """Extract a ``.tar.gz`` into ``target`` after :func:`check_archive_members`; returns ``target``.

    All or nothing: nothing is written unless every member is safe, and the
    members are extracted into a temporary folder inside ``target`` whose files
    are moved into place only once the whole archive has been read. A truncated or
    corrupt archive raises :class:`CorruptArchiveError` naming it, and leaves
    ``target`` as it was. Only the archive's own files are replaced (:func:`_move_into`):
    a file a user added to an extracted folder stays.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target))
    try:
        try:
            _read_gzip_to_the_end(Path(archive_path))
            with tarfile.open(archive_path, "r:*") as archive:
                members = check_archive_members(archive, staging)
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    archive.extractall(staging, members=members)
        except UnsafeArchiveError:
            raise
        except CORRUPT_ARCHIVE_ERRORS as error:
            raise CorruptArchiveError(
                f"{archive_path}: the archive is truncated or corrupt ({type(error).__name__}: {error}); "
                f"nothing was extracted to {target}"
            ) from None
        _move_into(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def verify_archive(path: str | Path, *, expected_sha256: str | None = None, official: bool = False) -> str:
    """The archive's sha256, checked against ``expected_sha256``, or the official one when ``official``.

    Returns a sentence saying what was verified. An archive whose checksum is
    unknown (not official, not the known repack, no ``expected_sha256``) is
    refused (:class:`CorruptArchiveError`): a flipped or truncated download is caught
    before anything is extracted.
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
    raise CorruptArchiveError(
        f"{path}: sha256 {digest} is not the official bAbI v1.2 archive's ({OFFICIAL_SHA256}) nor a known "
        f"repack's: the file is truncated, corrupt or another archive; pass --sha256 {digest} to use it anyway"
    )


def _verified(path: Path, expected_sha256: str | None) -> str | None:
    """``verify_archive``'s sentence for an archive that passes, None for one that does not."""
    try:
        return verify_archive(path, expected_sha256=expected_sha256)
    except ValueError:  # CorruptArchiveError is one too
        return None


def _check_holds_babi(archive_path: Path, target: Path) -> None:
    """Raise ``ValueError`` unless the archive holds a bAbI task file: one vouched for by ``--sha256`` alone could
    be any ``.tar.gz``, and would be extracted (and kept as the data's archive) in vain."""
    names = {f"qa{task}_{name}_{split}.txt" for task, name in TASK_NAMES.items() for split in ("train", "test")}
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_archive_members(archive, target)  # an unsafe member is named first, as it would be
            found = any(member.isfile() and Path(member.name).name in names for member in members)
    except CORRUPT_ARCHIVE_ERRORS:
        found = True  # unreadable: safe_extract names it as truncated or corrupt
    if not found:
        raise ValueError(f"{archive_path}: holds no bAbI task file (qa1_{TASK_NAMES[1]}_train.txt, ...): it is "
                         f"not the bAbI archive; nothing was extracted to {target}")


def data_main(argv: Sequence[str] | None = None,
              parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> Path:
    """``memnet data babi``: fetch (or take a local copy of) the archive, verify it, extract it safely.

    ``parser_class`` parses ``argv``: the ``memnet`` command gives its own (memnet.cli.typos.CommandParser,
    which names a mistyped option with the closest ones).
    """
    parser = parser_class(
        prog="memnet data babi",
        description="Fetch the bAbI v1.2 archive (or take a local file), check its sha256 and extract it safely.",
    )
    parser.add_argument("--dest", default=None,
                        help=f"target folder (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    parser.add_argument("--archive", help=f"a local {ARCHIVE_NAME} to use instead of downloading")
    parser.add_argument("--url", default=OFFICIAL_URL, help="where to download from (default: the official URL)")
    parser.add_argument("--sha256", help="expected sha256 of the archive (default: known checksums)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.dest is None and DATA_DIR_ENV in os.environ:
        value = os.environ[DATA_DIR_ENV]
        if not value.strip() or Path(value).expanduser().is_file():
            data_dir_from_env()  # raises, naming the variable
    dest = Path(args.dest or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    source = Path(args.archive).expanduser() if args.archive else None
    if source is not None and not source.is_file():  # before --dest is made: a mistyped name leaves nothing behind
        parser.error(f"--archive {source} is not a file")
    made = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    stored = dest / ARCHIVE_NAME
    if source is not None:
        message = verify_archive(source, expected_sha256=args.sha256)
        print(message)
        _check_holds_babi(source, dest)
        safe_extract(source, dest)  # from the given file: a failure names it and leaves dest as it was
        if source.resolve() != stored.resolve():
            shutil.copyfile(source, stored)
    elif stored.is_file() and (message := _verified(stored, args.sha256)):  # already there and sound: no download
        print(f"{stored}: {message}; extracting it (no download)")
        _check_holds_babi(stored, dest)
        safe_extract(stored, dest)
    else:
        partial = stored.with_name(stored.name + ".partial")
        print(f"downloading {args.url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(args.url, timeout=60) as response, open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as error:  # URLError (no network, a name not found, HTTP's errors), a timeout, a full disk
            partial.unlink(missing_ok=True)
            if made:  # the folder made for it, left empty
                with contextlib.suppress(OSError):
                    dest.rmdir()
            raise DownloadError(args.url, error) from None
        try:
            message = verify_archive(partial, expected_sha256=args.sha256, official=args.url == OFFICIAL_URL)
            _check_holds_babi(partial, dest)
        except ValueError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, stored)
        print(message)
        safe_extract(stored, dest)
    folder = dest / ARCHIVE_TOP
    count = sum(1 for _ in folder.rglob("*.txt")) if folder.is_dir() else 0
    print(f"extracted to {folder}, which holds {count} text files")  # the user's own too: they are kept
    return folder
