"""A supervised child process: started in its own process group, logs streamed, stopped with nothing left behind.

Used by the engines the gateway launches (vLLM today, SGLang on GPU). Three layers make sure no engine outlives
the gateway: a clean stop signals the whole process group (SIGTERM, then SIGKILL after a grace period); the child
is started with PR_SET_PDEATHSIG so the kernel stops it if the gateway dies without cleaning up (SIGKILL,
OOM-kill); and engines such as vLLM stop their own workers when their parent process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections import deque

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on host (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the engine's server will
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class SupervisedProcess:
    """One child process with its output kept (last lines) and forwarded to the log."""

    def __init__(self, argv: list[str], env: dict[str, str], label: str, keep_lines: int = 200) -> None:
        self.argv = argv
        self.env = env
        self.label = label
        self._lines: deque[str] = deque(maxlen=keep_lines)
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._log = logging.getLogger(f"vlmgate.engine.{label}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self._lines)[-n:])

    async def start(self) -> None:
        self._lines.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches every process the engine starts
            preexec_fn=_die_with_parent,
        )
        self._log.info("started pid %d: %s", self._proc.pid, " ".join(self.argv))
        self._pump = asyncio.create_task(self._pump_output(self._proc))

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._lines.append(line)
                level = logging.WARNING if (" ERROR " in line or "Traceback" in line) else logging.INFO
                self._log.log(level, "%s", line)

    async def wait(self) -> int:
        """Wait for the process to exit and its output to be drained; returns the exit code.

        The engine's own children (vLLM's EngineCore and workers, several GB each) outlive a leader that was
        killed or crashed; they share its process group, so the group is swept as soon as the leader is gone."""
        assert self._proc is not None
        code = await self._proc.wait()
        self._signal_group(self._proc.pid, signal.SIGKILL)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._pump, 5)
        return code

    async def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after grace_s; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                self._log.warning("did not stop within %.0f s; killing process group %d", grace_s, proc.pid)
        # Workers may outlive the leader: always sweep the group.
        self._signal_group(proc.pid, signal.SIGKILL)
        code = await proc.wait()
        if self._pump is not None:
            self._pump.cancel()
        return code

    def kill_group_now(self) -> None:
        """Synchronous last resort (atexit, signal handlers): SIGKILL the process group."""
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
