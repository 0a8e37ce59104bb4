"""Run `python app.py` in a subprocess on a free 127.0.0.1 port, wait until it serves, and always stop it.

    with running_app("--model", folder, log_dir=tmp_path) as server:
        Client(server.url).predict(handle_file(path), api_name="/predict")

Shared by the tests and the benchmarks. The server gets this process's environment plus `env`;
its stdout and stderr go to `server.log_path`, which `server.output()` reads. `app=` runs another
copy of app.py (a Space downloaded from the Hub) in its own folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180.0  # model load, warm-up and Gradio's import on 2 busy cores


@dataclass
class AppServer:
    """A running app: its URL, process and log; `spawned_at` is time.monotonic() just before the spawn."""

    url: str
    process: subprocess.Popen
    log_path: Path
    spawned_at: float
    ready_at: float

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL if it is still there after 10 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(*args: str, log_dir: Path, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT,
              app: Path = REPO / "app.py") -> AppServer:
    """Start `python app.py *args` and return once it answers HTTP; raise with its log if it dies or hangs."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"app-{port}.log"
    child_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                 "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(log_dir / f"gradio-{port}"),
                 "PYTHONUNBUFFERED": "1", **(env or {})}
    spawned_at = time.monotonic()
    with open(log_path, "wb") as log:
        # A session of its own, so stop() ends the server and anything it started, and nothing else.
        process = subprocess.Popen([sys.executable, str(app), *args], cwd=app.parent, env=child_env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = AppServer(f"http://127.0.0.1:{port}", process, log_path, spawned_at, spawned_at)
    try:
        server.ready_at = wait_until_serving(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_serving(server: AppServer, timeout: float) -> float:
    """Poll the page until it answers 200; the time it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {server.process.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(server.url + "/gradio_api/info", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"app.py did not serve within {timeout:.0f} s:\n{server.output()}")


def peak_rss(pid: int) -> int:
    """VmHWM of a process and of its live children, in bytes (the kernel's own high-water mark)."""
    total = 0
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid]
    for p in [pid, *children]:
        try:
            line = next(l for l in Path(f"/proc/{p}/status").read_text().splitlines() if l.startswith("VmHWM:"))
            total += int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            pass
    return total


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@contextmanager
def running_app(*args: str, log_dir: Path, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT,
                app: Path = REPO / "app.py") -> Iterator[AppServer]:
    """`start_app` as a context manager: the server is stopped however the block ends."""
    server = start_app(*args, log_dir=log_dir, env=env, timeout=timeout, app=app)
    try:
        yield server
    finally:
        server.stop()
