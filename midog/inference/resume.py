"""The progress journal that makes slide runs resumable.

While a slide is processed, ``<output>/<stem>.journal.jsonl`` records it:

- line 1, the header: the journal format and the run settings. These
  decide which tiles are read and what the detector returns for them: slide
  identity, tile grid and model hash (``midog.inference.runner`` makes them).
- every further line: one finished batch, with each tile's raw detections in
  tile px as the detector returned them, before seam merging.

Each line is written with one ``write`` call, then flushed and fsync'd, so a
process killed at any moment leaves whole lines plus at most one torn last
line, which ``RunJournal.resume`` drops. The outputs of a slide are written
only after every tile is in the journal, and the journal is removed after
the last output, so a slide's outputs are complete when
``<stem>.summary.json`` exists and ``<stem>.journal.jsonl`` does not.

Floats are written with Python's shortest round-trip ``repr``, so detections
read back from the journal are bit-identical to the detector's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from midog.errors import MidogError, OutputError
from midog.structures import Detections

__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_SUFFIX",
    "ResumeError",
    "RunJournal",
    "file_sha256",
    "journal_path",
    "settings_differences",
]

logger = logging.getLogger(__name__)

JOURNAL_FORMAT = 1
JOURNAL_SUFFIX = ".journal.jsonl"

# Bytes read per step when hashing a model file.
_HASH_BLOCK_BYTES = 1 << 20

# Model hashes by (path, size, mtime), so a run over many slides hashes each model once.
_sha256_cache: dict[tuple[str, int, int], str] = {}


class ResumeError(MidogError):
    """A run cannot be resumed: its journal or finished outputs were made with other settings."""


def journal_path(output_dir: str | Path, slide_path: str | Path) -> Path:
    """Return the journal of a slide: ``<output_dir>/<slide stem>.journal.jsonl``."""
    return Path(output_dir) / f"{Path(slide_path).stem}{JOURNAL_SUFFIX}"


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file, cached by path, size and modification time."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK_BYTES):
                digest.update(block)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """List the settings that differ, as ``"name: recorded -> current"``, in sorted order."""
    differences = []
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name) != current.get(name):
            differences.append(f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}")
    return differences


def _fsync_folder(folder: Path) -> None:
    """Make a new or removed directory entry durable; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _tile_record(index: int, detections: Detections) -> dict[str, Any]:
    return {
        "tile": int(index),
        "xy": detections.xy.reshape(-1).tolist(),
        "scores": detections.scores.tolist(),
        "labels": detections.labels.tolist(),
    }


def _detections_from_record(record: Mapping[str, Any], class_names: tuple[str, ...]) -> Detections:
    return Detections(
        np.asarray(record["xy"], dtype=np.float64).reshape(-1, 2),
        np.asarray(record["scores"], dtype=np.float32),
        np.asarray(record["labels"], dtype=np.int64),
        class_names,
    )


class RunJournal:
    """An open progress journal of one slide run; create it with ``start`` or ``resume``.

    Attributes:
        path: the journal file.
        settings: the run settings stored in its header.
        finished_tiles: indices (``Tile.index``) of the tiles whose detections
            the journal contains.
    """

    def __init__(
        self, path: Path, settings: dict[str, Any], finished_tiles: set[int], handle: IO[bytes]
    ) -> None:
        self.path = path
        self.settings = settings
        self.finished_tiles = finished_tiles
        self._handle: IO[bytes] | None = handle

    def __repr__(self) -> str:
        return f"RunJournal({str(self.path)!r}, finished_tiles={len(self.finished_tiles)})"

    @classmethod
    def start(cls, path: str | Path, settings: Mapping[str, Any]) -> RunJournal:
        """Create a journal with its header, replacing any journal at ``path``.

        Raises:
            OutputError: the file cannot be written.
        """
        path = Path(path)
        header = {"format": JOURNAL_FORMAT, "settings": dict(settings)}
        try:
            handle = path.open("wb")
            handle.write((json.dumps(header) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputError(f"Failed to write the progress journal {path}: {exc.strerror or exc}") from exc
        _fsync_folder(path.parent)
        return cls(path, dict(settings), set(), handle)

    @classmethod
    def resume(cls, path: str | Path, settings: Mapping[str, Any], slide_name: str) -> RunJournal:
        """Open an existing journal to continue its run.

        A torn or invalid last line, left by a process killed while writing,
        is dropped. A journal whose header cannot be read has no finished
        tile, so it is replaced by a new one.

        Args:
            path: the journal file; it must exist.
            settings: the settings of the run that resumes.
            slide_name: the slide's file name, for messages.

        Raises:
            ResumeError: the journal was written with other settings, or a line
                other than the last is invalid.
            OutputError: the file cannot be read or written.
        """
        path = Path(path)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise OutputError(f"Failed to read the progress journal {path}: {exc.strerror or exc}") from exc

        lines = content.split(b"\n")
        # ``split`` leaves the bytes after the last newline as the last item:
        # empty for a whole file, a torn line otherwise.
        complete, torn = lines[:-1], lines[-1]
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT or "settings" not in header:
            logger.warning(
                "Progress journal %s has no valid header, so the slide starts from its first tile", path
            )
            return cls.start(path, settings)

        differences = settings_differences(header["settings"], settings)
        if differences:
            raise ResumeError(
                f"Cannot resume {slide_name}: journal {path} was written with other settings "
                f"({'; '.join(differences)}); rerun with the journal's settings, or without --resume to "
                "start over"
            )

        finished: set[int] = set()
        good_bytes = len(complete[0]) + 1
        for number, line in enumerate(complete[1:], start=2):
            is_last = number == len(complete) and not torn
            try:
                batch = json.loads(line)
                indices = [int(record["tile"]) for record in batch["tiles"]]
            except (ValueError, KeyError, TypeError) as exc:
                if is_last:
                    torn = line
                    break
                raise ResumeError(
                    f"Cannot resume {slide_name}: line {number} of journal {path} is invalid ({exc}); "
                    "run without --resume to start over"
                ) from exc
            finished.update(indices)
            good_bytes += len(line) + 1

        try:
            if torn:
                logger.warning("Progress journal %s: dropped a torn last line of %d bytes", path, len(torn))
                os.truncate(path, good_bytes)
            handle = path.open("ab")
        except OSError as exc:
            raise OutputError(f"Failed to reopen the progress journal {path}: {exc.strerror or exc}") from exc
        return cls(path, dict(header["settings"]), finished, handle)

    def append(self, tile_indices: Sequence[int], detections: Sequence[Detections]) -> None:
        """Record one finished batch and make it durable.

        Args:
            tile_indices: ``Tile.index`` of each tile of the batch.
            detections: the detector's result per tile, ``xy`` in tile px.

        Raises:
            ValueError: the two sequences differ in length, or the journal is closed.
            OutputError: the line could not be written (a full disk, for example).
        """
        if len(tile_indices) != len(detections):
            raise ValueError(f"got {len(tile_indices)} tile indices but {len(detections)} detection sets")
        if self._handle is None:
            raise ValueError(f"progress journal {self.path} is closed")
        batch = {"tiles": [_tile_record(i, d) for i, d in zip(tile_indices, detections, strict=True)]}
        try:
            self._handle.write((json.dumps(batch) + "\n").encode("utf-8"))
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(
                f"Failed to write the progress journal {self.path}: {exc.strerror or exc}"
            ) from exc
        self.finished_tiles.update(int(i) for i in tile_indices)

    def iter_tiles(self, class_names: tuple[str, ...]) -> Iterator[tuple[int, Detections]]:
        """Read the recorded tiles back from the file, in ascending tile index.

        A tile recorded twice keeps its last record. The file is read line by
        line, so memory grows with the detections, not with the file's text.

        Args:
            class_names: class names for the returned detections.

        Yields:
            ``(tile index, detections in tile px)``.
        """
        if self._handle is not None:
            self._handle.flush()
        by_tile: dict[int, Detections] = {}
        with self.path.open("rb") as handle:
            handle.readline()
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                for record in json.loads(line)["tiles"]:
                    by_tile[int(record["tile"])] = _detections_from_record(record, class_names)
        for index in sorted(by_tile):
            yield index, by_tile[index]

    def close(self) -> None:
        """Close the file; the journal stays on disk. Closing twice is allowed."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        """Close and delete the journal."""
        self.close()
        self.path.unlink(missing_ok=True)
        _fsync_folder(self.path.parent)

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
