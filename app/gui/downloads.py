"""The app-wide download service: core's DownloadManager, with its progress turned into Qt signals.

It belongs to the application (the main window), not to the model manager window, so downloads go on when
that window is closed, and unfinished ones come back after a restart.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.core.models.downloads import (
    DEFAULT_CONNECTIONS,
    DownloadError,
    DownloadManager,
    DownloadSpec,
    Progress,
    RetryPolicy,
)


class DownloadService(QObject):
    """Signals (delivered on the GUI thread):
    progressed(Progress): any state change or progress of a download, at most every 0.5 s per download.
    """

    progressed = Signal(object)

    def __init__(
        self,
        *,
        max_parallel: int = 1,
        connections: int = DEFAULT_CONNECTIONS,
        retry: RetryPolicy | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.manager = DownloadManager(
            max_parallel=max_parallel, listener=self.progressed.emit, retry=retry, connections=connections
        )

    def restore(self) -> list[str]:
        return self.manager.restore()

    def start(self, spec: DownloadSpec) -> None:
        self.manager.submit(spec)

    def pause(self, download_id: str) -> None:
        self.manager.pause(download_id)

    def resume(self, download_id: str) -> None:
        self.manager.resume(download_id)

    def cancel(self, download_id: str) -> None:
        self.manager.cancel(download_id)

    def state(self, download_id: str) -> str | None:
        try:
            return self.manager.state(download_id)
        except KeyError:
            return None

    def error(self, download_id: str) -> DownloadError | None:
        try:
            return self.manager.error(download_id)
        except KeyError:
            return None

    def running(self) -> bool:
        """Whether a download is transferring or checking now."""
        return any(state == "running" for _id, state, _progress in self.manager.jobs())

    def last_progress(self, download_id: str) -> Progress | None:
        for job_id, _state, progress in self.manager.jobs():
            if job_id == download_id:
                return progress
        return None
