"""Model downloads from the Hugging Face Hub: resumable, verified, disk-aware, atomic.

Built on huggingface-hub's own pieces (``hf_hub_url``, ``get_hf_file_metadata``, its configured HTTP
session and auth headers), so ``HF_ENDPOINT``, ``HF_TOKEN``, proxies and ``HF_HUB_OFFLINE`` behave as users
expect. On top of them this module adds what the library does not do for large files:

- partial data is kept (``models/.partial/``) and resumed with a Range request across calls and restarts;
- sha256 is computed while downloading (no second read of 26 GB) and checked against the catalog or the
  hub's LFS metadata; a mismatch is quarantined, never presented as a model;
- dropped connections, 5xx answers and stalls (no bytes, or too few, for a while) are retried with backoff;
- free disk space is checked before starting;
- files appear in the models folder only when complete and verified (all parts of a split model together);
- every failure is one :class:`DownloadError` with a message a person can act on.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.core.errors import DeskError
from app.core.models.partfiles import DiskFullError, PartialFile, RangedPart
from app.core.storage import paths

DISK_MARGIN_BYTES = 512 * 1024 * 1024
PROGRESS_INTERVAL_S = 0.5
PARTIAL_DIR = ".partial"
QUARANTINE_DIR = ".quarantine"
DEFAULT_CONNECTIONS = 4  # parallel byte ranges per file (Ollama pulls in 16, huggingface-hub's hf_xet in chunks)
MAX_CONNECTIONS = 16
MIN_RANGE_BYTES = 64 * 1024 * 1024  # smaller files come over one connection
RANGE_POLL_S = 0.1  # how often the download's thread looks at its connections when there is nothing to hash
RANGE_SAVE_INTERVAL_S = 1.0  # how often the ranges' record is saved (a killed process resumes from it)


class DownloadError(DeskError):
    """A download failed. ``reason``: not_found, unauthorized, offline, network, checksum, disk_full, disk
    (could not write), bug, cancelled or paused (the last two are not failures: the caller asked for them)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per file, backoff, and the stall watchdog (too few bytes for too long)."""

    attempts: int = 8
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    stall_timeout_s: float = 30.0  # no byte at all for this long: reconnect
    min_bytes_per_s: float = 1024.0  # averaged over the stall window: below this, reconnect


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: where it is on the hub and what it should be."""

    repo: str
    filename: str
    revision: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return Path(self.filename).name


@dataclass(frozen=True)
class DownloadSpec:
    """A model to download: one file or every part of a split model, placed into ``folder`` together."""

    id: str
    files: tuple[FileSpec, ...]
    folder: Path

    @property
    def known_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def targets(self) -> tuple[Path, ...]:
        return tuple(self.folder / f.name for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "folder": str(self.folder), "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownloadSpec:
        return cls(str(data["id"]), tuple(FileSpec(**f) for f in data["files"]), Path(data["folder"]))


def spec_for_catalog_entry(entry: Any) -> DownloadSpec:
    """The download of a :class:`app.core.models.catalog.CatalogEntry` (every part) into its models folder place."""
    model = entry.model
    if not model.repo:
        raise DownloadError(f"{model.name} is built in; there is nothing to download.", reason="not_found")
    files = tuple(FileSpec(model.repo, f.name, model.revision, f.size, f.sha256) for f in entry.quant.files)
    return DownloadSpec(entry.id, files, paths.models_dir() / model.id)


def spec_for_repo_file(text: str, revision: str | None = None) -> DownloadSpec:
    """``owner/name/path/to/file.gguf`` as a download into ``models/owner__name/``."""
    parts = text.strip("/").split("/")
    if len(parts) < 3 or not parts[-1].endswith(".gguf"):
        raise DownloadError(
            f"{text!r} is neither a catalog id nor OWNER/REPO/FILE.gguf; see `mixtral-desk models list`.",
            reason="not_found",
        )
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return DownloadSpec(text, (FileSpec(repo, filename, revision),), paths.models_dir() / repo.replace("/", "__"))


@dataclass(frozen=True)
class Progress:
    """Where a download stands. ``speed_bps`` is averaged over the last few seconds."""

    id: str
    state: str  # checking, downloading, verifying, retrying, done, paused, cancelled, failed
    file: str = ""
    file_index: int = 0
    file_count: int = 0
    file_done: int = 0
    file_total: int | None = None
    done: int = 0
    total: int | None = None
    speed_bps: float = 0.0
    eta_s: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


ProgressCallback = Callable[[Progress], None]


class Control:
    """Pause / cancel flags for one running download, safe to set from any thread."""

    def __init__(self) -> None:
        self._pause = threading.Event()
        self._cancel = threading.Event()
        self._changed = threading.Event()

    def pause(self) -> None:
        self._pause.set()
        self._changed.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._changed.set()

    def clear_pause(self) -> None:
        self._pause.clear()
        self._changed.clear()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a pause or cancel arrives."""
        return self._changed.wait(seconds)

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise DownloadError("The download was cancelled.", reason="cancelled")
        if self._pause.is_set():
            raise DownloadError("The download is paused; resume it to continue from where it stopped.", reason="paused")


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk holding ``folder`` (its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _remove_in_background(folder: Path) -> None:
    """Delete ``folder`` without making the caller (the GUI thread) wait for gigabytes to be unlinked: it is
    renamed at once (a download started again gets a fresh folder) and removed by a thread of its own."""
    trash = folder.with_name(f".deleting-{folder.name}-{time.monotonic_ns()}")
    try:
        folder.rename(trash)
    except OSError:
        return  # nothing there, or it cannot be moved: the next download of it resumes or replaces it
    threading.Thread(target=shutil.rmtree, args=(trash, True), name="remove-partial", daemon=True).start()


def partial_dir(spec: DownloadSpec) -> Path:
    safe = spec.id.replace("/", "__").replace(":", "__")
    return paths.models_dir() / PARTIAL_DIR / safe


class _Retryable(Exception):
    pass


class _NoRanges(Exception):
    """The server answered a byte-range request with the whole file."""


class _Speedometer:
    """Bytes per second over a sliding window, and the stall watchdog's judgement."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.samples: list[tuple[float, int]] = []

    def add(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.pop(0)

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def too_slow(self, now: float, started: float, min_rate: float) -> bool:
        if now - started < self.window_s or len(self.samples) < 2:
            return False
        return self.rate() < min_rate and now - self.samples[0][0] >= self.window_s * 0.9


@dataclass(frozen=True)
class _Place:
    """Which file of the download is being fetched, and the bytes of the files before it."""

    file: FileSpec
    index: int
    count: int
    done_before: int
    total: int


class Downloader:
    """Fetches one :class:`DownloadSpec`; ``run()`` blocks and returns the placed paths.

    A file of known size is fetched over ``connections`` parallel byte ranges of at least ``min_range_bytes``
    each (one connection for smaller files, and when the server ignores ranges).
    """

    def __init__(
        self,
        spec: DownloadSpec,
        *,
        on_progress: ProgressCallback | None = None,
        control: Control | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        free_space: Callable[[Path], int] = free_disk_bytes,
        connections: int = DEFAULT_CONNECTIONS,
        min_range_bytes: int = MIN_RANGE_BYTES,
    ) -> None:
        self.spec = spec
        self.on_progress = on_progress or (lambda progress: None)
        self.control = control or Control()
        self.retry = retry or RetryPolicy()
        self.token = token
        self.free_space = free_space
        self.connections = max(1, min(connections, MAX_CONNECTIONS))
        self.min_range_bytes = max(1, min_range_bytes)
        self._last_report = 0.0
        self._speed = _Speedometer(5.0)
        self._digests: dict[str, str] = {}

    # -- public -----------------------------------------------------------------------------------

    def run(self) -> list[Path]:
        """Download, verify and place every file; returns the final paths.

        Raises:
            DownloadError: for every failure, including pause and cancel (``reason`` tells which).
        """
        spec = self.spec
        staging = partial_dir(spec)
        self._report(Progress(spec.id, "checking", file_count=len(spec.files)))
        done_before = total = 0
        try:  # every way out reports its state: a listener never waits on "checking" forever
            files = self._resolve_sizes()
            total = sum(f.size or 0 for f in files)
            already = sum(self._partial_size(staging, f) for f in files)
            self._check_disk(total - already)
            staging.mkdir(parents=True, exist_ok=True)
            for index, file in enumerate(files):
                self._fetch(_Place(file, index, len(files), done_before, total), staging)
                done_before += file.size or 0
        except OSError as err:  # the staging folder or a part file could not be written
            failure = DownloadError(f"Could not write {spec.id} to disk: {err}", reason="disk")
            self._report(Progress(spec.id, "failed", message=str(failure)))
            raise failure from err
        except DownloadError as err:
            if err.reason == "cancelled":
                shutil.rmtree(staging, ignore_errors=True)
                self._report(Progress(spec.id, "cancelled", message=str(err)))
            elif err.reason == "paused":
                self._report(Progress(spec.id, "paused", done=done_before, total=total, message=str(err)))
            else:
                self._report(Progress(spec.id, "failed", message=str(err)))
            raise
        placed = self._place(staging, files)
        self._report(Progress(spec.id, "done", file_count=len(files), done=total, total=total))
        return placed

    # -- steps ------------------------------------------------------------------------------------

    def _resolve_sizes(self) -> list[FileSpec]:
        """Fill in size and sha256 from the hub where the spec does not know them (a HEAD request each)."""
        resolved = []
        for file in self.spec.files:
            if file.size is not None and file.sha256 is not None:
                resolved.append(file)
                continue
            metadata = self._metadata(file)
            etag = (metadata.etag or "").strip('"')
            sha = file.sha256 or (etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None)
            resolved.append(replace(file, size=file.size or metadata.size, sha256=sha))
        return resolved

    def _metadata(self, file: FileSpec) -> Any:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(file.repo, file.filename, revision=file.revision)
        try:
            # an unanswering hub fails within the stall timeout (at most 10 s), not a network stack's minutes
            return get_hf_file_metadata(url, token=self.token, timeout=min(10.0, self.retry.stall_timeout_s))
        except Exception as err:
            raise _translate(err, file) from err

    def _check_disk(self, needed: int) -> None:
        folder = self.spec.folder
        free = self.free_space(folder)
        if needed + DISK_MARGIN_BYTES > free:
            gib = 1024**3
            raise DownloadError(
                f"Not enough disk space for {self.spec.id}: it needs {needed / gib:.1f} GiB more (plus "
                f"{DISK_MARGIN_BYTES / gib:.1f} GiB to spare) but only {free / gib:.1f} GiB are free on the disk "
                f"holding {folder}. Free some space or choose a smaller quantization.",
                reason="disk_full",
            )

    @staticmethod
    def _partial_size(staging: Path, file: FileSpec) -> int:
        part = staging / (file.name + ".part")
        ranged = RangedPart.filled_bytes(part)
        if ranged is not None:
            return ranged  # the .part itself has the whole file's (sparse) size
        for candidate in (part, staging / file.name):
            if candidate.exists():
                return candidate.stat().st_size
        return 0

    def _fetch(self, place: _Place, staging: Path) -> None:
        """Fetch, verify and stage one file (``staging/NAME``), resuming what an earlier run left."""
        file = place.file
        finished = staging / file.name
        if finished.exists():
            return  # verified earlier (a split model resumed after some parts were complete)
        part_path = staging / (file.name + ".part")
        ranged = RangedPart.resume(part_path, file.size)
        if ranged is None and file.size and not part_path.exists() and self._ranges_for(file.size) > 1:
            ranged = RangedPart.create(part_path, file.size, self.connections, self.min_range_bytes)
        try:
            if ranged is not None:
                try:
                    self._fetch_ranges(ranged, place)
                except _NoRanges:
                    ranged.discard()  # the server sends whole files only: one connection, from the start
                    ranged = None
            if ranged is None:
                partial = PartialFile(part_path, file.size)
                self._fetch_sequential(partial, place)
                size = partial.size
                self._report(self._progress_at(place, size, "verifying"))
                digest = partial.digest()
            else:
                self._report(self._progress_at(place, ranged.filled, "verifying"))
                size, digest = ranged.size, ranged.digest()
                ranged.sidecar.unlink(missing_ok=True)
        except DiskFullError:
            raise DownloadError(
                f"The disk filled up while downloading {file.name}; what arrived is kept. Free some space, then "
                "resume the download.",
                reason="disk_full",
            ) from None
        finally:
            if ranged is not None:
                ranged.close()
        if file.size is not None and size != file.size:
            self._quarantine(part_path, file, f"it is {size} bytes instead of {file.size}")
        if file.sha256 is not None and digest != file.sha256:
            self._quarantine(part_path, file, f"its sha256 is {digest[:12]}… instead of {file.sha256[:12]}…")
        part_path.replace(finished)
        self._digests[file.name] = digest

    def _ranges_for(self, size: int) -> int:
        return max(1, min(self.connections, size // self.min_range_bytes))

    def _request(self, file: FileSpec) -> tuple[Any, str, dict[str, str]]:
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        headers = dict(build_hf_headers(token=self.token))
        headers["Accept-Encoding"] = "identity"
        return get_session(), hf_hub_url(file.repo, file.filename, revision=file.revision), headers

    def _retry_or_fail(self, attempt: int, why: _Retryable, place: _Place, have: int, what: str) -> None:
        """Wait before attempt ``attempt + 1``, or fail when attempts are spent."""
        file = place.file
        if attempt >= self.retry.attempts:
            raise DownloadError(
                f"Downloading {file.name} kept failing ({why}); {have} of {file.size or '?'} bytes are kept, so "
                "trying again later resumes from there.",
                reason="network",
            ) from None
        delay = min(self.retry.backoff_s * 2 ** (attempt - 1), self.retry.backoff_max_s)
        progress = self._progress_at(place, have, "retrying")
        self._report(replace(progress, message=f"{what}{why}; retrying in {delay:.1f}s"))
        if self.control.wait(delay):
            self.control.check()

    # -- one connection ---------------------------------------------------------------------------

    def _fetch_sequential(self, partial: PartialFile, place: _Place) -> None:
        file = place.file
        session, url, headers = self._request(file)
        attempt = 0
        while True:
            self.control.check()
            if file.size is not None and partial.size >= file.size:
                return
            try:
                self._stream(session, url, headers, partial, place)
                if file.size is None or partial.size >= file.size:
                    return
                raise _Retryable("the connection ended early")
            except _Retryable as why:
                attempt += 1
                self._retry_or_fail(attempt, why, place, partial.size, "")

    def _stream(self, session: Any, url: str, headers: dict[str, str], partial: PartialFile, place: _Place) -> None:
        import httpx2 as httpx

        file = place.file
        request_headers = dict(headers)
        if partial.size:
            request_headers["Range"] = f"bytes={partial.size}-"
        started, speed = time.monotonic(), _Speedometer(self.retry.stall_timeout_s)
        try:
            with self._get(session, url, request_headers) as response:
                status = response.status_code
                if status == 416 and file.size is not None and partial.size >= file.size:
                    return
                _check_status(status, file)
                if partial.size and status == 200:  # the server ignored Range: start this file again
                    partial.restart()
                with partial.path.open("ab") as out:
                    for chunk in response.iter_bytes():  # as received: nothing is lost when a connection drops
                        self.control.check()
                        partial.append(out, chunk)
                        now = time.monotonic()
                        speed.add(now, partial.size)
                        self._speed.add(now, place.done_before + partial.size)
                        if file.size is not None and partial.size > file.size:
                            partial.restart()
                            raise _Retryable("the server sent more bytes than the file has")
                        if now - self._last_report >= PROGRESS_INTERVAL_S:
                            self._report(self._progress_at(place, partial.size, "downloading"))
                        if speed.too_slow(now, started, self.retry.min_bytes_per_s):
                            raise _Retryable(f"the transfer stalled below {self.retry.min_bytes_per_s:.0f} B/s")
        except (httpx.TransportError, httpx.StreamError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from err
        self._report(self._progress_at(place, partial.size, "downloading"))

    def _get(self, session: Any, url: str, headers: dict[str, str]) -> Any:
        """A streamed GET whose read timeout is the stall watchdog's."""
        import httpx2 as httpx

        timeout = httpx.Timeout(self.retry.stall_timeout_s, connect=min(30.0, self.retry.stall_timeout_s))
        return session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True)

    # -- parallel ranges --------------------------------------------------------------------------

    def _fetch_ranges(self, part: RangedPart, place: _Place) -> None:
        """Fill every unfinished range of ``part`` on its own connection while this thread hashes the filled
        prefix, reports progress and records the ranges; returns when all are filled.

        Raises:
            DownloadError: pause, cancel, or a range that kept failing (the record keeps what arrived).
            _NoRanges: the server does not serve byte ranges.
        """
        stop = threading.Event()
        wake = threading.Event()
        failures: list[BaseException] = []

        def fill(index: int) -> None:
            try:
                self._fill_range(part, index, place, stop)
            except BaseException as err:  # handed to the loop below, which raises it on this download's thread
                failures.append(err)
                stop.set()
            finally:
                wake.set()

        workers = [
            threading.Thread(target=fill, args=(i,), name=f"download-range-{i}", daemon=True)
            for i, byte_range in enumerate(part.ranges)
            if not byte_range.done
        ]
        for worker in workers:
            worker.start()
        last_save = time.monotonic()
        try:
            while any(worker.is_alive() for worker in workers):
                if not part.hash_up_to_frontier() and wake.wait(RANGE_POLL_S):
                    wake.clear()
                now = time.monotonic()
                self._speed.add(now, place.done_before + part.filled)
                if now - self._last_report >= PROGRESS_INTERVAL_S:
                    self._report(self._progress_at(place, part.filled, "downloading"))
                if now - last_save >= RANGE_SAVE_INTERVAL_S:
                    part.save()
                    last_save = now
        finally:
            stop.set()
            for worker in workers:
                worker.join()  # no connection may write into the file after this returns
            part.save()
        if failures:
            raise _most_telling(failures)
        self._report(self._progress_at(place, part.filled, "downloading"))

    def _fill_range(self, part: RangedPart, index: int, place: _Place, stop: threading.Event) -> None:
        byte_range = part.ranges[index]
        session, url, headers = self._request(place.file)
        label = f"range {index + 1} of {len(part.ranges)}: "
        attempt = 0
        while not byte_range.done and not stop.is_set():
            self.control.check()
            try:
                self._stream_range(session, url, headers, part, index, stop, place.file)
                if not byte_range.done and not stop.is_set():
                    raise _Retryable("the connection ended early")
            except _Retryable as why:
                attempt += 1
                self._retry_or_fail(attempt, why, place, part.filled, label)

    def _stream_range(
        self,
        session: Any,
        url: str,
        headers: dict[str, str],
        part: RangedPart,
        index: int,
        stop: threading.Event,
        file: FileSpec,
    ) -> None:
        import httpx2 as httpx

        byte_range = part.ranges[index]
        request_headers = {**headers, "Range": f"bytes={byte_range.next}-{byte_range.end - 1}"}
        started, speed = time.monotonic(), _Speedometer(self.retry.stall_timeout_s)
        try:
            with self._get(session, url, request_headers) as response:
                status = response.status_code
                if status == 200:
                    raise _NoRanges()
                _check_status(status, file)
                if status != 206 or not response.headers.get("Content-Range", "").startswith(
                    f"bytes {byte_range.next}-"
                ):
                    raise _Retryable(f"the server answered {status} with another range")
                for chunk in response.iter_bytes():
                    if stop.is_set():
                        return
                    self.control.check()
                    part.write(index, chunk)
                    now = time.monotonic()
                    speed.add(now, byte_range.filled)
                    if byte_range.done:
                        return
                    if speed.too_slow(now, started, self.retry.min_bytes_per_s):
                        raise _Retryable(f"the transfer stalled below {self.retry.min_bytes_per_s:.0f} B/s")
        except (httpx.TransportError, httpx.StreamError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from err

    # -- reporting and placing --------------------------------------------------------------------

    def _progress_at(self, place: _Place, have: int, state: str) -> Progress:
        rate = self._speed.rate() if state == "downloading" else 0.0
        done = place.done_before + have
        eta = (place.total - done) / rate if rate > 0 and place.total else None
        file = place.file
        return Progress(
            self.spec.id, state, file.name, place.index, place.count, have, file.size, done, place.total, rate, eta
        )

    def _report(self, progress: Progress) -> None:
        self._last_report = time.monotonic()
        self.on_progress(progress)

    def _quarantine(self, part: Path, file: FileSpec, why: str) -> None:
        quarantine = paths.models_dir() / QUARANTINE_DIR
        quarantine.mkdir(parents=True, exist_ok=True)
        target = quarantine / f"{file.name}.{int(time.time())}.bad"
        part.replace(target)
        raise DownloadError(
            f"{file.name} arrived damaged ({why}). It was moved to {target} and is not used as a model; "
            "download it again.",
            reason="checksum",
        )

    def _place(self, staging: Path, files: list[FileSpec]) -> list[Path]:
        """Move every verified file into the models folder at once, then drop the staging folder."""
        self.spec.folder.mkdir(parents=True, exist_ok=True)
        placed = []
        from app.core.models.local import register, sha256_file

        for file in files:
            target = self.spec.folder / file.name
            (staging / file.name).replace(target)
            placed.append(target)
        shutil.rmtree(staging, ignore_errors=True)
        for file, target in zip(files, placed, strict=True):
            digest = self._digests.get(file.name) or sha256_file(target)  # parts verified in an earlier run
            register(target, sha256=digest, source=f"{file.repo}/{file.filename}")
        return placed


def _check_status(status: int, file: FileSpec) -> None:
    if status in (401, 403, 404):
        raise _status_error(status, file)
    if status >= 500 or status == 429:
        raise _Retryable(f"the hub answered {status}")
    if status not in (200, 206):
        raise DownloadError(f"The hub answered {status} for {file.name}.", reason="network")


def _most_telling(failures: list[BaseException]) -> BaseException:
    """Of what the connections of one file failed with, the one to raise: cancel, then pause, then the rest."""
    for reason in ("cancelled", "paused"):
        for failure in failures:
            if isinstance(failure, DownloadError) and failure.reason == reason:
                return failure
    for failure in failures:
        if not isinstance(failure, _NoRanges):
            return failure
    return failures[0]


def _status_error(status: int, file: FileSpec) -> DownloadError:
    if status == 404:
        return DownloadError(
            f"{file.filename} was not found in {file.repo}: check the repo and file name "
            "(`mixtral-desk models list` shows the known ones).",
            reason="not_found",
        )
    return DownloadError(
        f"{file.repo} needs you to be logged in: accept its terms on the Hugging Face website and set HF_TOKEN.",
        reason="unauthorized",
    )


def _translate(err: Exception, file: FileSpec) -> DownloadError:
    """huggingface-hub and httpx errors as one :class:`DownloadError`."""
    name = type(err).__name__
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403, 404):
        return _status_error(int(status), file)
    if name == "OfflineModeIsEnabled":
        return DownloadError("Downloads are off because HF_HUB_OFFLINE is set; unset it to download.", reason="offline")
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return _status_error(401 if name == "GatedRepoError" else 404, file)
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"):
        return _status_error(404, file)
    return DownloadError(
        f"Could not reach the hub for {file.repo} ({name}: {err}). Check the connection and try again.",
        reason="network",
    )


@dataclass
class _Job:
    spec: DownloadSpec
    control: Control = field(default_factory=Control)
    state: str = "queued"
    progress: Progress | None = None
    error: DownloadError | None = None
    paths: list[Path] = field(default_factory=list)
    run: int = 0  # bumped at every start, so a finishing old run cannot overwrite a newer one's state


class DownloadManager:
    """A queue of downloads, ``max_parallel`` at a time, with pause / resume / cancel and a state file so
    unfinished downloads come back after a restart. ``listener`` receives every :class:`Progress`."""

    STATE_FILE = "downloads.json"

    def __init__(
        self,
        *,
        max_parallel: int = 1,
        listener: ProgressCallback | None = None,
        retry: RetryPolicy | None = None,
        free_space: Callable[[Path], int] = free_disk_bytes,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self.max_parallel = max(1, max_parallel)
        self.connections = connections  # per file, for downloads started from now on
        self.listener = listener or (lambda progress: None)
        self.retry = retry
        self.free_space = free_space
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._idle = threading.Condition(self._lock)

    # -- queue ------------------------------------------------------------------------------------

    def submit(self, spec: DownloadSpec) -> str:
        """Queue ``spec`` (a second submit of the same id resumes it)."""
        with self._lock:
            job = self._jobs.get(spec.id)
            if job is None or job.state in ("done", "cancelled", "failed"):
                self._jobs[spec.id] = _Job(spec)
            else:
                job.control.clear_pause()
                if job.state == "paused":
                    job.state = "queued"
            self._save_locked()
            self._start_next_locked()
        return spec.id

    def pause(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.control.pause()
            if job.state == "queued":
                job.state = "paused"
            self._save_locked()

    def resume(self, job_id: str) -> None:
        self.submit(self._jobs[job_id].spec)

    def cancel(self, job_id: str) -> None:
        """Stop and delete the partial data (the GUI asks the user first)."""
        with self._lock:
            job = self._jobs[job_id]
            job.control.cancel()
            if job.state in ("queued", "paused"):
                job.state = "cancelled"
                _remove_in_background(partial_dir(job.spec))
            self._save_locked()

    def state(self, job_id: str) -> str:
        with self._lock:
            return self._jobs[job_id].state

    def error(self, job_id: str) -> DownloadError | None:
        with self._lock:
            return self._jobs[job_id].error

    def jobs(self) -> list[tuple[str, str, Progress | None]]:
        with self._lock:
            return [(i, j.state, j.progress) for i, j in self._jobs.items()]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is running or queued; True if that happened in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while any(j.state in ("queued", "running") for j in self._jobs.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        for thread in list(self._threads.values()):
            thread.join(timeout)
        return True

    # -- persistence ------------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Re-queue downloads that were unfinished when the app last stopped (paused ones stay paused)."""
        from app.core.storage.jsonfile import read_json_dict

        data = read_json_dict(paths.data_dir() / self.STATE_FILE)
        restored = []
        for item in data.get("jobs", []):
            try:
                spec = DownloadSpec.from_json(item["spec"])
            except (KeyError, TypeError, ValueError):
                continue
            with self._lock:
                job = _Job(spec, state="paused" if item.get("state") == "paused" else "queued")
                if job.state == "paused":
                    job.control.pause()
                self._jobs[spec.id] = job
            restored.append(spec.id)
        with self._lock:
            self._start_next_locked()
        return restored

    def _save_locked(self) -> None:
        from app.core.storage.jsonfile import write_json_atomic

        unfinished = [
            {"spec": j.spec.to_json(), "state": j.state}
            for j in self._jobs.values()
            if j.state in ("queued", "running", "paused")
        ]
        write_json_atomic(paths.data_dir() / self.STATE_FILE, {"jobs": unfinished})

    # -- workers ----------------------------------------------------------------------------------

    def _start_next_locked(self) -> None:
        running = sum(1 for j in self._jobs.values() if j.state == "running")
        for job_id, job in self._jobs.items():
            if running >= self.max_parallel:
                break
            if job.state == "queued":
                job.state = "running"
                job.run += 1
                running += 1
                thread = threading.Thread(
                    target=self._work, args=(job_id, job.run), name=f"download-{job_id}", daemon=True
                )
                self._threads[job_id] = thread
                thread.start()

    def _work(self, job_id: str, run: int) -> None:
        job = self._jobs[job_id]

        def forward(progress: Progress) -> None:
            job.progress = progress
            if progress.state in ("done", "paused", "cancelled", "failed"):
                with self._lock:  # listeners that ask for the state right away must see the new one
                    if job.run == run:
                        job.state = progress.state
            self.listener(progress)

        downloader = Downloader(
            job.spec,
            on_progress=forward,
            control=job.control,
            retry=self.retry,
            free_space=self.free_space,
            connections=self.connections,
        )
        try:
            placed = downloader.run()
            state, error = "done", None
        except DownloadError as err:
            placed, error = [], err
            state = {"paused": "paused", "cancelled": "cancelled"}.get(err.reason, "failed")
        except Exception as err:  # a bug must not leave the job "running" and its row "checking" for good
            placed, state = [], "failed"
            error = DownloadError(f"The download of {job.spec.id} stopped: {type(err).__name__}: {err}", reason="bug")
            forward(Progress(job.spec.id, "failed", message=str(error)))
        with self._idle:
            if job.run == run:
                job.state, job.error, job.paths = state, error, placed
            self._save_locked()
            self._start_next_locked()
            self._idle.notify_all()
