"""One live run per output folder: ``<output_dir>/run.lock``, created with ``O_CREAT|O_EXCL`` by rank 0.

The lock holds ``{"host", "pid", "started"}`` (JSON) and its mtime is the heartbeat: a thread refreshes it every
``heartbeat_s`` seconds while the run lives. A second run into the folder is refused naming the holder; a lock whose
heartbeat is older than three periods belongs to a run that died without releasing it (a lost node), and so does one
of this host whose process is gone (SIGKILL): both are taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("tips.train")
LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0
STALE_AFTER = 3  # heartbeats missed before a lock counts as abandoned


class RunFolderBusy(RuntimeError):
    """Another live run holds the output folder."""


class RunLock:
    """The lock of one output folder; :meth:`acquire` it before writing anything, :meth:`release` at the end."""

    def __init__(self, folder: str | Path, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Create the lock or take over an abandoned one; raise :class:`RunFolderBusy` if a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder, age = self._read_holder()
            if age <= STALE_AFTER * self.heartbeat_s and not self._died_here(holder):
                raise RunFolderBusy(
                    f"{self.path.parent} is in use by a live run (host {holder.get('host', '?')}, pid "
                    f"{holder.get('pid', '?')}, heartbeat {age:.0f} s ago): stop it or pass another run.output_dir"
                )
            log.warning("taking over %s of host %s pid %s: its heartbeat is %.0f s old, the run died",
                        self.path, holder.get("host", "?"), holder.get("pid", "?"), age)
            self.path.unlink(missing_ok=True)
            if not self._create():  # another starter took it over first
                holder, _ = self._read_holder()
                raise RunFolderBusy(f"{self.path.parent} was just taken by host {holder.get('host', '?')}, pid "
                                    f"{holder.get('pid', '?')}: pass another run.output_dir")
        self._thread = threading.Thread(target=self._beat, name="tips-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder, _ = self._read_holder()
        if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)

    def _died_here(self, holder: dict) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        if holder.get("host") != self.owner["host"] or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
        return True

    def _read_holder(self) -> tuple[dict, float]:
        """(holder's JSON, seconds since its last heartbeat); a lock that vanished meanwhile is infinitely old,
        one half written (a holder killed between create and write) keeps its age with an unknown holder."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return {}, float("inf")
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        return (holder if isinstance(holder, dict) else {}), age

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError as e:  # a lock removed under us: say so once a period, keep training
                log.warning("cannot refresh %s: %s", self.path, e)
