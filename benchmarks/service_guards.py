"""Measure the service's guards against a real uvicorn; prints JSON.
The numbers in docs/service.md ("Limits before work") come from it.

    .venv/bin/python benchmarks/service_guards.py                       # this checkout
    git worktree add /tmp/before c5aa484
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/service_guards.py  # another one's api/

It serves the app on 127.0.0.1:8811 and 0.0.0.0:8812 with a stub queue (no worker), and measures:
the bytes of a 300 MB upload the app took in and the most spooled to temporary files at once
(with Content-Length, and chunked), 300 unknown keys, the stored size of a ~19 MB 8-bit JPEG,
a redirect's Location, the security headers, /docs, and local mode reached from off the machine
(on this machine's own non-loopback address), with a cross-site POST and a foreign Host.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import tempfile
import threading
import time
import uuid

import numpy as np
import uvicorn
from PIL import Image

KEY = "Zq7-Lm2xVt9RkP4wNb6Hs3Yd8Jf5Gc1A"
MiB = 2**20
HEADERS = ("x-content-type-options", "content-security-policy", "referrer-policy", "cache-control", "x-frame-options")


class StubQueue:
    def send_task(self, name, args, task_id):
        pass


class Counted:
    """Outermost ASGI wrapper: the request body bytes the app took in."""

    def __init__(self, app):
        self.app, self.received, self.peak_spooled = app, 0, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def watch_spool(counted: Counted, stop: threading.Event) -> None:
    """The most bytes held at once in this process's deleted (anonymous) temporary files."""
    while not stop.is_set():
        total = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if "(deleted)" in target or target.startswith(tempfile.gettempdir()):
                    total += os.fstat(int(fd)).st_size
            except OSError:
                pass
        counted.peak_spooled = max(counted.peak_spooled, total)
        time.sleep(0.01)


def serve(app, host: str, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def make_app(blob_dir: str, **settings):
    from api.core.config import Settings
    from api.main import create_app

    return create_app(Settings(blob_dir=blob_dir, **settings), celery=StubQueue())


def send_until_answered(port: int, head: bytes, chunks) -> tuple[str, int]:
    """Send the request until the server answers or hangs up; -> (status line, bytes of body sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    sock.setblocking(False)
    sent, answer = 0, b""
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                if answer:
                    raise StopIteration
                try:
                    n = sock.send(view)
                    sent, view = sent + n, view[n:]
                except BlockingIOError:
                    time.sleep(0.001)
    except (StopIteration, BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    sock.settimeout(30)
    try:
        while b"\r\n" not in answer and (more := sock.recv(65536)):
            answer += more
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), sent


def upload_300mb(port: int, counted: Counted, chunked: bool) -> dict:
    boundary = b"b0undary"
    head_part = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="target"\r\n\r\nmild edema\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    tail_part = b"\r\n--" + boundary + b"--\r\n"
    size = 300 * 10**6
    block = bytes(MiB)

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    def chunks():
        yield frame(head_part)
        for offset in range(0, size, MiB):
            yield frame(block[: min(MiB, size - offset)])
        yield frame(tail_part) + (b"0\r\n\r\n" if chunked else b"")

    head = (
        b"POST /counterfactual HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
    )
    length = len(head_part) + size + len(tail_part)
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % length
    counted.received = counted.peak_spooled = 0
    start = time.perf_counter()
    status, sent = send_until_answered(port, head, chunks())
    return {
        "status": status,
        "seconds": round(time.perf_counter() - start, 2),
        "app_took_in_MiB": round(counted.received / MiB, 2),
        "most_spooled_MiB": round(counted.peak_spooled / MiB, 2),
        "client_sent_MiB": round(sent / MiB, 1),  # includes what the kernel's buffers took
    }


def request(host: str, port: int, method: str, path: str, headers=None, body=b""):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return out


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    b = uuid.uuid4().hex.encode()
    out = b""
    for name, value in fields.items():
        out += b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (b, name.encode(), value.encode())
    for name, (filename, data, ctype) in files.items():
        out += b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\nContent-Type: %s\r\n\r\n' % (
            b,
            name.encode(),
            filename.encode(),
            ctype.encode(),
        )
        out += data + b"\r\n"
    return out + b"--%s--\r\n" % b, "multipart/form-data; boundary=" + b.decode()


def noisy_jpeg() -> bytes:
    """A 30-megapixel 8-bit colour JPEG of about 19 MB (noise compresses badly, as film grain does)."""
    rng = np.random.default_rng(0)
    h, w = 5000, 6000
    ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 35, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def own_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        return None if address.startswith("127.") else address
    except OSError:
        return None


def main() -> None:
    import api

    out: dict = {"api": os.path.dirname(api.__file__)}
    tmp = tempfile.mkdtemp()
    counted = Counted(make_app(f"{tmp}/keyed", api_keys=[KEY]))
    stop = threading.Event()
    threading.Thread(target=watch_spool, args=(counted, stop), daemon=True).start()
    server = serve(counted, "127.0.0.1", 8811)
    key = {"X-API-Key": KEY}
    out["300 MB, Content-Length"] = upload_300mb(8811, counted, chunked=False)
    out["300 MB, chunked"] = upload_300mb(8811, counted, chunked=True)
    jpeg = noisy_jpeg()
    body, ctype = multipart({"target": "mild edema"}, {"image": ("x.jpg", jpeg, "image/jpeg")})
    status, _, answer = request("127.0.0.1", 8811, "POST", "/counterfactual", {**key, "Content-Type": ctype}, body)
    stored = f"{tmp}/keyed/{json.loads(answer)['id']}.input.png" if status == 202 else None
    out["JPEG"] = {
        "upload_MB": round(len(jpeg) / 1e6, 1),
        "status": status,
        "input.png_MiB": stored and round(os.path.getsize(stored) / MiB, 1),
        "mode": stored and Image.open(stored).mode,
    }
    status, headers, _ = request("127.0.0.1", 8811, "GET", "/healthz/", {**key, "Host": "evil.example"})
    out["GET /healthz/ with Host: evil.example"] = {"status": status, "location": headers.get("location")}
    for path in ("/", "/healthz"):
        _, headers, _ = request("127.0.0.1", 8811, "GET", path)
        out[f"headers of {path}"] = {k: v for k, v in headers.items() if k in HEADERS}
    status, _, page = request("127.0.0.1", 8811, "GET", "/docs", key)
    out["/docs"] = {"status": status, "loads cdn.jsdelivr.net": b"cdn.jsdelivr" in page}
    codes: dict = {}
    retry_after = None
    start = time.perf_counter()
    for i in range(300):
        status, headers, _ = request("127.0.0.1", 8811, "GET", "/jobs/abcdefghijklmnopqrstuv", {"X-API-Key": f"x{i}"})
        codes[status] = codes.get(status, 0) + 1
        retry_after = retry_after or headers.get("retry-after")
    out["300 unknown keys"] = {
        "codes": codes,
        "seconds": round(time.perf_counter() - start, 2),
        "Retry-After": retry_after,
    }
    server.should_exit = True
    stop.set()
    time.sleep(0.5)

    # Local mode by its settings, but bound to every address (uvicorn --host 0.0.0.0).
    server = serve(make_app(f"{tmp}/local", single_machine=True, auth_disabled=True), "0.0.0.0", 8812)
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png, format="PNG")
    body, ctype = multipart({"target": "mild edema"}, {"image": ("x.png", png.getvalue(), "image/png")})
    lan = own_address()
    if lan:
        status, _, _ = request(lan, 8812, "POST", "/counterfactual", {"Content-Type": ctype, "Host": "127.0.0.1"}, body)
        out[f"local mode, POST from {lan}"] = status
    cross = {"Content-Type": ctype, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    out["local mode, cross-site POST"] = request("127.0.0.1", 8812, "POST", "/counterfactual", cross, body)[0]
    out["local mode, Host: evil.example"] = request("127.0.0.1", 8812, "GET", "/healthz", {"Host": "evil.example"})[0]
    server.should_exit = True
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
