"""Downloads against a local fake hub that misbehaves on purpose: cuts, 5xx, trickles, wrong bodies,
ignored ranges, pauses, cancels, a killed process, a full disk and split models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.core.models.downloads import (
    Control,
    Downloader,
    DownloadError,
    DownloadManager,
    DownloadSpec,
    FileSpec,
    Progress,
    RetryPolicy,
    partial_dir,
)
from app.core.storage import paths
from quant.fakehub import Fault, sha256_of

REPO = "test/mixtral-tiny"
FAST = RetryPolicy(attempts=6, backoff_s=0.01, backoff_max_s=0.05, stall_timeout_s=1.0, min_bytes_per_s=5_000)


@pytest.fixture
def payload(tiny_v1: dict[str, Path]) -> Path:
    return tiny_v1["Q4_0"]


@pytest.fixture
def hub(fake_hub, payload: Path):
    fake_hub.add(REPO, payload, "model.Q4_0.gguf")
    return fake_hub


def spec(name: str = "model.Q4_0.gguf", *, size: int | None = None, sha256: str | None = None) -> DownloadSpec:
    return DownloadSpec("test:Q4_0", (FileSpec(REPO, name, None, size, sha256),), paths.models_dir() / "test")


def run(download: DownloadSpec, **kwargs) -> tuple[list[Path], list[Progress]]:
    events: list[Progress] = []
    result = Downloader(download, on_progress=events.append, retry=kwargs.pop("retry", FAST), **kwargs).run()
    return result, events


def test_download_is_verified_and_placed(hub, payload: Path) -> None:
    placed, events = run(spec())
    target = paths.models_dir() / "test" / "model.Q4_0.gguf"
    assert placed == [target] and sha256_of(target) == sha256_of(payload)
    assert next(e.state for e in events) == "checking" and events[-1].state == "done"
    assert events[-1].done == events[-1].total == payload.stat().st_size
    assert not partial_dir(spec()).exists()


def test_a_dropped_connection_resumes_where_it_stopped(hub, payload: Path) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("cut", after=1_000_000), Fault("cut", after=3_000_000))
    placed, events = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert hub.bytes_served["model.Q4_0.gguf"] == payload.stat().st_size  # resumed with Range, nothing twice
    assert sum(e.state == "retrying" for e in events) == 2


def test_server_errors_are_retried(hub, payload: Path) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("status", status=500), Fault("status", status=503))
    placed, _ = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)


def test_a_trickling_server_trips_the_stall_watchdog(hub, payload: Path) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("trickle", chunk=64, delay=0.05))
    placed, events = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert any(e.state == "retrying" and "stalled" in e.message for e in events)


def test_a_wrong_body_is_quarantined_not_installed(hub) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("corrupt"))
    with pytest.raises(DownloadError) as caught:
        run(spec())
    assert caught.value.reason == "checksum" and "sha256" in str(caught.value)
    assert not (paths.models_dir() / "test" / "model.Q4_0.gguf").exists()
    assert len(list((paths.models_dir() / ".quarantine").iterdir())) == 1


def test_a_server_that_ignores_range_still_gives_a_correct_file(hub, payload: Path) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("cut", after=2_000_000), Fault("ignore_range"))
    placed, _ = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert hub.bytes_served["model.Q4_0.gguf"] == 2_000_000 + payload.stat().st_size


@pytest.mark.parametrize(
    ("status", "reason", "words"), [(404, "not_found", "not found"), (401, "unauthorized", "HF_TOKEN")]
)
def test_missing_or_gated_files_say_why(hub, payload: Path, status: int, reason: str, words: str) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("status", status=status))
    known = spec(size=payload.stat().st_size, sha256=sha256_of(payload))  # no HEAD first: the GET answers
    with pytest.raises(DownloadError, match=words) as caught:
        run(known)
    assert caught.value.reason == reason


def test_an_unknown_file_is_not_found(hub) -> None:
    with pytest.raises(DownloadError) as caught:
        run(spec("nope.gguf"))
    assert caught.value.reason == "not_found" and "nope.gguf" in str(caught.value)


def test_a_full_disk_is_refused_before_any_byte(hub, payload: Path) -> None:
    with pytest.raises(DownloadError, match="Not enough disk space") as caught:
        run(spec(), free_space=lambda folder: payload.stat().st_size // 2)
    assert caught.value.reason == "disk_full" and hub.bytes_served["model.Q4_0.gguf"] == 0


def test_offline_mode_is_reported_plainly(payload: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        run(spec())
    assert caught.value.reason == "offline" and "HF_HUB_OFFLINE" in str(caught.value)


def paused_after(done: int, **kwargs) -> DownloadError:
    """Run a download on a thread, pause it once ``done`` bytes arrived, and return how it ended."""
    control = Control()
    arrived = threading.Event()
    errors: list[DownloadError] = []

    def work() -> None:
        try:
            Downloader(
                spec(), on_progress=lambda p: p.done > done and arrived.set(), control=control, retry=FAST, **kwargs
            ).run()
        except DownloadError as err:
            errors.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    assert arrived.wait(30)
    control.pause()
    worker.join(30)
    assert errors
    return errors[0]


def test_pause_keeps_the_bytes_and_resume_continues(hub, payload: Path) -> None:
    hub.throttle_bytes_per_s = 4_000_000
    assert paused_after(2_000_000).reason == "paused"
    kept = (partial_dir(spec()) / "model.Q4_0.gguf.part").stat().st_size
    assert 2_000_000 < kept < payload.stat().st_size
    hub.throttle_bytes_per_s = 0
    placed, _ = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert hub.bytes_served["model.Q4_0.gguf"] < payload.stat().st_size + 1_000_000


def test_cancel_removes_the_partial_data(hub) -> None:
    hub.throttle_bytes_per_s = 4_000_000
    control = Control()
    started = threading.Event()
    outcome: list[DownloadError] = []

    def work() -> None:
        try:
            Downloader(spec(), on_progress=lambda p: p.done and started.set(), control=control, retry=FAST).run()
        except DownloadError as err:
            outcome.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(30)
    control.cancel()
    worker.join(30)
    assert outcome[0].reason == "cancelled"
    assert not partial_dir(spec()).exists()
    assert not (paths.models_dir() / "test" / "model.Q4_0.gguf").exists()


CHILD = """
import sys
from app.core.models.downloads import Downloader, DownloadSpec, FileSpec
from app.core.storage import paths
spec = DownloadSpec("test:Q4_0", (FileSpec("test/mixtral-tiny", "model.Q4_0.gguf"),), paths.models_dir() / "test")
Downloader(spec, on_progress=lambda p: print(p.state, p.done, flush=True)).run()
"""


def test_a_killed_download_resumes_after_restart(hub, payload: Path, isolated_home: Path) -> None:
    hub.throttle_bytes_per_s = 3_000_000
    env = {**os.environ, "HF_ENDPOINT": hub.url, "MIXTRAL_DESK_HOME": str(isolated_home)}
    env.pop("HF_HUB_OFFLINE", None)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    for line in child.stdout:
        state, done = line.split()
        if state == "downloading" and int(done) > 2_000_000:
            break
    child.send_signal(signal.SIGKILL)  # no chance to clean up
    child.wait(30)
    kept = (partial_dir(spec()) / "model.Q4_0.gguf.part").stat().st_size
    assert kept > 2_000_000
    requests_before = len(hub.requested_from)
    hub.throttle_bytes_per_s = 0
    placed, _ = run(spec())
    assert sha256_of(placed[0]) == sha256_of(payload)
    # the restart asked only for the rest (the killed connection's server thread may still count bytes it was
    # writing into the dead socket, so the byte counter is no measure here)
    assert hub.requested_from[requests_before:] == [("model.Q4_0.gguf", kept)]


@pytest.fixture
def split_hub(fake_hub, tmp_path: Path):
    from quant.tiny import TinyMixtralSpec, write_f16

    write_f16(TinyMixtralSpec(n_layer=2), tmp_path / "split.gguf", split_max_tensors=9)
    parts = sorted(tmp_path.glob("split-*.gguf"))
    for part in parts:
        fake_hub.add(REPO, part)
    download = DownloadSpec(
        "test:split", tuple(FileSpec(REPO, p.name, None, None, None) for p in parts), paths.models_dir() / "split"
    )
    return fake_hub, parts, download


def test_split_models_appear_only_when_every_part_is_verified(split_hub) -> None:
    hub, parts, download = split_hub
    hub.fail_next(parts[1].name, Fault("corrupt"))
    with pytest.raises(DownloadError, match=parts[1].name):
        run(download)
    assert not (paths.models_dir() / "split").exists()  # nothing half-installed
    placed, _ = run(download)
    assert [p.name for p in placed] == [p.name for p in parts]
    assert all(sha256_of(a) == sha256_of(b) for a, b in zip(placed, parts, strict=True))
    assert hub.bytes_served[parts[0].name] == parts[0].stat().st_size  # the good part was not fetched twice


def test_the_queue_runs_one_at_a_time_and_survives_a_restart(split_hub, payload: Path) -> None:
    hub, _parts, split = split_hub
    hub.add(REPO, payload, "model.Q4_0.gguf")
    seen: list[tuple[str, str]] = []
    manager = DownloadManager(max_parallel=1, listener=lambda p: seen.append((p.id, p.state)), retry=FAST)
    manager.submit(spec())
    manager.submit(split)
    assert manager.wait(60)
    assert manager.state("test:Q4_0") == "done" and manager.state("test:split") == "done"
    first_done = seen.index(("test:Q4_0", "done"))
    assert ("test:split", "checking") not in seen[:first_done]  # the second waited for the first
    state_file = paths.data_dir() / DownloadManager.STATE_FILE
    assert '"jobs": []' in state_file.read_text()


def test_unfinished_downloads_come_back_after_a_restart(hub, payload: Path) -> None:
    first = DownloadManager(retry=FAST)
    first.submit(spec())
    first.pause("test:Q4_0")
    assert first.wait(30)
    second = DownloadManager(retry=FAST)
    assert second.restore() == ["test:Q4_0"]
    assert second.state("test:Q4_0") in ("paused", "done")
    second.resume("test:Q4_0")
    assert second.wait(60) and second.state("test:Q4_0") == "done"
    assert sha256_of(paths.models_dir() / "test" / "model.Q4_0.gguf") == sha256_of(payload)


def test_cancelling_a_paused_download_clears_its_partial_data_without_waiting(hub, payload: Path) -> None:
    from app.core.models.downloads import partial_dir

    hub.throttle_bytes_per_s = 2_000_000  # slow enough to pause half-way
    reported: list[str] = []
    manager = DownloadManager(retry=FAST, listener=lambda p: reported.append(p.state))
    manager.submit(spec())
    manager.pause("test:Q4_0")
    assert manager.wait(30) and manager.state("test:Q4_0") == "paused"
    staging = partial_dir(spec())
    manager.cancel("test:Q4_0")  # the GUI thread calls this: the files go in the background
    assert manager.state("test:Q4_0") == "cancelled" and not staging.exists()
    hub.throttle_bytes_per_s = 0
    manager.submit(spec())  # a fresh start is not disturbed by the removal still going on
    assert manager.wait(60) and manager.state("test:Q4_0") == "done"
    assert sha256_of(paths.models_dir() / "test" / "model.Q4_0.gguf") == sha256_of(payload)


# -- parallel byte ranges ---------------------------------------------------------------------------------


def ranged(payload: Path, connections: int = 4) -> dict[str, int]:
    """Downloader options that cut the payload into ``connections`` ranges."""
    return {"connections": connections, "min_range_bytes": payload.stat().st_size // connections}


def test_parallel_ranges_fetch_every_byte_once(hub, payload: Path) -> None:
    size = payload.stat().st_size
    placed, events = run(spec(), **ranged(payload))
    assert sha256_of(placed[0]) == sha256_of(payload)
    starts = sorted(start for name, start in hub.requested_from if name == "model.Q4_0.gguf")
    assert len(starts) == 4 and starts[0] == 0 and len(set(starts)) == 4
    assert hub.bytes_served["model.Q4_0.gguf"] == size
    done = [e.done for e in events if e.state == "downloading"]
    assert done == sorted(done) and events[-1].state == "done"
    assert not partial_dir(spec()).exists()


@pytest.mark.parametrize(
    "fault",
    [Fault("cut", after=300_000), Fault("status", status=503), Fault("trickle", chunk=64, delay=0.05)],
    ids=["cut", "503", "stall"],
)
def test_a_failing_range_is_retried_on_its_own(hub, payload: Path, fault: Fault) -> None:
    hub.fail_next("model.Q4_0.gguf", fault)
    placed, events = run(spec(), **ranged(payload))
    assert sha256_of(placed[0]) == sha256_of(payload)
    retries = [e for e in events if e.state == "retrying"]
    assert len(retries) == 1 and retries[0].message.startswith("range ")
    if fault.kind == "cut":  # the other ranges were not disturbed and the cut one went on from its byte
        assert hub.bytes_served["model.Q4_0.gguf"] == payload.stat().st_size


def test_ranges_from_a_server_that_ignores_range_fall_back_to_one_connection(hub, payload: Path) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("ignore_range"))
    placed, _ = run(spec(), **ranged(payload))
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert hub.requested_from[-1] == ("model.Q4_0.gguf", 0)  # the last request is the whole file, from byte 0


def test_a_damaged_range_is_quarantined(hub) -> None:
    hub.fail_next("model.Q4_0.gguf", Fault("corrupt"))
    with pytest.raises(DownloadError) as caught:
        run(spec(), connections=4, min_range_bytes=1 << 20)
    assert caught.value.reason == "checksum"
    assert not (paths.models_dir() / "test" / "model.Q4_0.gguf").exists()
    assert not list(partial_dir(spec()).glob("*.ranges"))


def test_paused_ranges_resume_where_each_stopped(hub, payload: Path) -> None:
    hub.throttle_bytes_per_s = 2_000_000  # per connection
    assert paused_after(1_000_000, **ranged(payload)).reason == "paused"
    record = json.loads((partial_dir(spec()) / "model.Q4_0.gguf.part.ranges").read_text())
    unfinished = sorted(next_byte for _start, end, next_byte in record["ranges"] if next_byte < end)
    assert unfinished and all(n > s for s, _e, n in record["ranges"])  # every range had begun
    requests_before = len(hub.requested_from)
    hub.throttle_bytes_per_s = 0
    placed, _ = run(spec(), **ranged(payload))
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert sorted(start for _name, start in hub.requested_from[requests_before:]) == unfinished


RANGED_CHILD = """
import sys
from app.core.models.downloads import Downloader, DownloadSpec, FileSpec
from app.core.storage import paths
spec = DownloadSpec("test:Q4_0", (FileSpec("test/mixtral-tiny", "model.Q4_0.gguf"),), paths.models_dir() / "test")
Downloader(spec, connections=4, min_range_bytes=int(sys.argv[1]), on_progress=lambda p: print(p.state, p.done, flush=True)).run()
"""


def _recorded(record_path: Path) -> int:
    try:
        return sum(n - s for s, _e, n in json.loads(record_path.read_text())["ranges"])
    except (OSError, ValueError):
        return 0


def test_killed_ranges_resume_from_their_record(hub, payload: Path, isolated_home: Path) -> None:
    hub.throttle_bytes_per_s = 1_000_000  # per connection
    env = {**os.environ, "HF_ENDPOINT": hub.url, "MIXTRAL_DESK_HOME": str(isolated_home)}
    env.pop("HF_HUB_OFFLINE", None)
    quarter = str(payload.stat().st_size // 4)
    child = subprocess.Popen([sys.executable, "-c", RANGED_CHILD, quarter], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    record_path = partial_dir(spec()) / "model.Q4_0.gguf.part.ranges"
    for line in child.stdout:
        state, done = line.split()
        if state == "downloading" and int(done) > 2_000_000 and _recorded(record_path) > 1_000_000:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    record = json.loads(record_path.read_text())
    unfinished = sorted(next_byte for _start, end, next_byte in record["ranges"] if next_byte < end)
    requests_before = len(hub.requested_from)
    hub.throttle_bytes_per_s = 0
    placed, _ = run(spec(), **ranged(payload))
    assert sha256_of(placed[0]) == sha256_of(payload)
    assert sorted(start for _name, start in hub.requested_from[requests_before:]) == unfinished


def test_a_failure_before_the_first_byte_reaches_the_listener(hub) -> None:
    events: list[Progress] = []
    with pytest.raises(DownloadError):
        Downloader(spec("nope.gguf"), on_progress=events.append, retry=FAST).run()
    assert [e.state for e in events] == ["checking", "failed"] and "not found" in events[-1].message


def test_an_unexpected_error_fails_the_job_instead_of_leaving_it_running(hub) -> None:
    seen: list[Progress] = []
    manager = DownloadManager(retry=FAST, listener=seen.append, free_space=lambda folder: 1 // 0)
    manager.submit(spec())
    assert manager.wait(30)
    assert manager.state("test:Q4_0") == "failed" and seen[-1].state == "failed"
    assert "ZeroDivisionError" in seen[-1].message
