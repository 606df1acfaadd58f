"""An S3-compatible object store as a dump target (``s3://bucket/prefix``).

The dump is the flattened stream (as over SSH: it needs no seeking), sent as one multipart
upload by the ``minio`` client library (the ``s3`` extra): the S3 API makes an object
visible only when ``CompleteMultipartUpload`` succeeds, so an upload that is abandoned or
broken never leaves an object that looks whole; kdumpy also aborts it
(``AbortMultipartUpload``) so the server frees the parts.

Facts relied on (the S3 API as AWS documents it and S3-compatible servers implement it):

* parts are 5 MiB to 5 GiB each, at most 10,000 of them; kdumpy sends 16 MiB parts, so one
  dump can reach 156 GiB of flattened stream;
* each request is signed with AWS Signature V4, which covers ``x-amz-content-sha256``: over
  plain HTTP minio sends the SHA-256 of each part's payload there (the server recomputes and
  rejects a part whose bytes differ); over HTTPS it sends ``Content-MD5`` instead, which the
  server checks the same way. Either way each part carries its checksum;
* a failed request is retried by the HTTP layer (urllib3's ``Retry``) a bounded number of
  times with exponential backoff, and every connect/read has a timeout, so a dead server
  ends the upload within ``attempts x (connect + read timeout + backoff)``.

Credentials come from a file in the AWS shared-credentials format (``[default]`` with
``aws_access_key_id`` / ``aws_secret_access_key`` / optional ``aws_session_token``), which
must be mode 0600 or stricter: it is copied into the capture image.
"""

from __future__ import annotations

import configparser
import errno
import io
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kdumpy.errors import KdumpyError
from kdumpy.formats.sink import FlatSink

#: bytes per multipart part (S3: 5 MiB minimum except the last, 10,000 parts at most)
PART_SIZE = 16 << 20
#: the producer hands the uploader chunks of about this size; a few are queued at most
CHUNK = 1 << 20
QUEUE_CHUNKS = 8
#: HTTP-level attempts per request and the timeouts of each (seconds)
ATTEMPTS = 4
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
BACKOFF = 0.5


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str             # "" or "a/b" (no leading or trailing slash)

    def key(self, rel: str = "") -> str:
        rel = rel.strip("/")
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def url(self, rel: str = "") -> str:
        key = self.key(rel)
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` -> :class:`S3Location`; bucket names as S3 allows them
    (3-63 characters of lower-case letters, digits, dots and hyphens)."""
    import re
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"{url!r}: {bucket!r} is not an S3 bucket name")
    prefix = "/".join(p for p in prefix.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise ValueError(f"{url!r}: '.' and '..' are not allowed in the prefix")
    return S3Location(bucket, prefix)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


def read_credentials(path: str, profile: str = "default") -> S3Credentials:
    """Read an AWS shared-credentials file; refuse one that others may read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KdumpyError(f"{path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KdumpyError(f"{path}: mode {st.st_mode & 0o777:04o} lets others read the S3 "
                          "secret; chmod 600 it")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise KdumpyError(f"{path}: not an AWS credentials file: "
                          f"{str(exc).splitlines()[0]}") from None
    if not parser.has_section(profile):
        raise KdumpyError(f"{path}: no [{profile}] section")
    sec = parser[profile]
    key, secret = sec.get("aws_access_key_id"), sec.get("aws_secret_access_key")
    if not key or not secret:
        raise KdumpyError(f"{path}: [{profile}] needs aws_access_key_id and "
                          "aws_secret_access_key")
    return S3Credentials(key.strip(), secret.strip(),
                         (sec.get("aws_session_token") or "").strip() or None)


def make_client(endpoint: str, creds: S3Credentials, region: str | None = None, *,
                attempts: int = ATTEMPTS, connect_timeout: float = CONNECT_TIMEOUT,
                read_timeout: float = READ_TIMEOUT) -> Any:
    """A ``minio.Minio`` client for ``endpoint`` (``http[s]://host[:port]``) whose every
    request is retried at most ``attempts - 1`` times with backoff and time-limited."""
    from urllib.parse import urlsplit
    try:
        import urllib3
        from minio import Minio
    except ImportError:
        raise KdumpyError("S3 targets need the minio library: pip install 'kdumpy[s3]'") \
            from None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("",
                                                                                       "/"):
        raise KdumpyError(f"{endpoint!r}: the S3 endpoint must be http[s]://host[:port]")
    retry = urllib3.Retry(total=attempts - 1, connect=attempts - 1, read=attempts - 1,
                          status=attempts - 1, backoff_factor=BACKOFF,
                          status_forcelist=(500, 502, 503, 504), raise_on_status=False)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_timeout,
                                                       read=read_timeout),
                               retries=retry, maxsize=4)
    return Minio(parts.netloc, access_key=creds.access_key, secret_key=creds.secret_key,
                 session_token=creds.session_token, secure=parts.scheme == "https",
                 region=region or None, http_client=http)


def s3_error(exc: BaseException, what: str) -> OSError:
    """An OSError for a failed S3 call: EACCES for refused credentials, ECONNABORTED for a
    lost server, EIO for the rest; the message keeps the server's error code."""
    code = getattr(exc, "code", None)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                "InvalidToken", "ExpiredToken"):
        return OSError(errno.EACCES, f"{what}: the server refused the credentials ({code})")
    if code is not None:
        return OSError(errno.EIO, f"{what}: {code}: {getattr(exc, 'message', exc)}")
    name = type(exc).__name__
    if name in ("MaxRetryError", "NewConnectionError", "ProtocolError", "ReadTimeoutError",
                "ConnectTimeoutError") or isinstance(exc, ConnectionError):
        reason = getattr(exc, "reason", None) or exc
        return OSError(errno.ECONNABORTED, f"{what}: server unreachable or lost: "
                                           f"{str(reason).splitlines()[0][:200]}")
    return OSError(errno.EIO, f"{what}: {name}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


class S3Directory:
    """A dump "directory" under an S3 prefix; the same interface as the local and SSH ones.

    S3 has no directories: ``make_dir`` creates nothing, and a dump directory exists when an
    object lies under ``REL/``. Small files are single ``PutObject`` calls (visible only when
    whole); the vmcore is a multipart upload (:class:`S3Target`).
    """

    remote = True

    def __init__(self, location: S3Location, client: Any, *, endpoint: str = "") -> None:
        self.location = location
        self.client = client
        self.endpoint = endpoint

    def describe(self, rel: str = "") -> str:
        return self.location.url(rel)

    def check(self) -> None:
        try:
            found = self.client.bucket_exists(self.location.bucket)
        except Exception as exc:  # noqa: BLE001 - any client failure becomes an OSError
            raise s3_error(exc, f"{self.describe()} at {self.endpoint}") from None
        if not found:
            raise OSError(errno.ENOENT, f"{self.describe()}: no such bucket at "
                                        f"{self.endpoint}")

    def free_bytes(self) -> int | None:
        return None             # an object store reports no free space

    def exists(self, rel: str) -> bool:
        key = self.location.key(rel)
        try:
            for _obj in self.client.list_objects(self.location.bucket, prefix=key + "/"):
                return True
            self.client.stat_object(self.location.bucket, key)
            return True
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "code", None) in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise s3_error(exc, self.describe(rel)) from None

    def make_dir(self, rel: str) -> None:
        return None

    def put(self, rel: str, data: bytes) -> str:
        try:
            self.client.put_object(self.location.bucket, self.location.key(rel),
                                   io.BytesIO(data), len(data),
                                   content_type="application/octet-stream")
        except Exception as exc:  # noqa: BLE001
            raise s3_error(exc, self.describe(rel)) from None
        return self.describe(rel)

    def get(self, rel: str) -> bytes:
        """One object's bytes (the small side objects; the crash index reads these)."""
        try:
            resp = self.client.get_object(self.location.bucket, self.location.key(rel))
        except Exception as exc:  # noqa: BLE001
            raise s3_error(exc, self.describe(rel)) from None
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def list_keys(self, rel: str = "") -> Iterator[tuple[str, int]]:
        """(key relative to the prefix, size) of every object below ``rel``."""
        base = self.location.key(rel)
        start = base + "/" if base else ""
        skip = len(self.location.prefix) + 1 if self.location.prefix else 0
        try:
            for obj in self.client.list_objects(self.location.bucket, prefix=start,
                                                recursive=True):
                yield obj.object_name[skip:], int(obj.size or 0)
        except Exception as exc:  # noqa: BLE001
            raise s3_error(exc, self.describe(rel)) from None

    def list_files(self) -> Iterator[str]:
        """Every object key below the prefix, relative to it (the crash index)."""
        for key, _size in self.list_keys():
            yield key

    def dump_target(self, rel: str, *, flattened: bool = True) -> S3Target:
        return S3Target(self, rel)

    def discard(self, rel: str) -> None:
        try:
            self.client.remove_object(self.location.bucket, self.location.key(rel))
        except Exception:  # noqa: BLE001 - nothing to discard, or the server is gone
            pass

    def list_dirs(self) -> list[str]:
        return []               # retention is for local and NFS targets only

    def remove_tree(self, rel: str) -> None:
        raise KdumpyError("s3: removing dumps is left to the bucket's lifecycle rules")


def open_s3_directory(target: Any, path: Any = None) -> S3Directory:
    """The :class:`S3Directory` of a ``[target]`` with ``s3 = ...`` (a
    :class:`kdumpy.setup.config.TargetConfig`); ``path`` maps the credentials file's
    absolute path into a test root (``SystemPaths.path``)."""
    location = parse_s3_url(target.s3_url)
    creds_path = path(target.s3_credentials) if path else target.s3_credentials
    client = make_client(target.s3_endpoint, read_credentials(creds_path), target.s3_region)
    return S3Directory(location, client, endpoint=target.s3_endpoint)


class _Abandoned(Exception):
    """Raised into the uploader's read so minio aborts the multipart upload."""


class _ChunkReader(io.RawIOBase):
    """The uploader's side of a bounded queue of chunks: ``read`` blocks for data, returns
    b"" at the end of a whole stream, and raises when the producer abandoned it (so the
    upload is aborted, never completed short)."""

    def __init__(self, q: queue.Queue[bytes | None | BaseException],
                 abandoned: threading.Event) -> None:
        self.q = q
        self.abandoned = abandoned
        self.buf = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n < 0 or len(self.buf) < n):
            if self.abandoned.is_set():
                raise _Abandoned()
            try:
                item = self.q.get(timeout=0.5)
            except queue.Empty:
                if self.abandoned.is_set():
                    raise _Abandoned() from None
                continue
            if item is None:
                self.done = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self.buf += item
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _UploadStream:
    """What :class:`FlatSink` writes to: gathers writes into :data:`CHUNK` pieces and queues
    them for the uploader thread; a failed upload turns the next write into its OSError."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self.pending = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        self.pending += data
        if len(self.pending) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.target._send(bytes(self.pending))
            self.pending.clear()


class S3Target:
    """One flattened dump as a multipart upload to ``REL``, completed on :meth:`commit`."""

    def __init__(self, directory: S3Directory, rel: str) -> None:
        self.directory = directory
        self.key = directory.location.key(rel)
        self.dest = directory.describe(rel)
        self.error: BaseException | None = None
        self.etag: str | None = None
        self._q: queue.Queue[bytes | None | BaseException] = queue.Queue(QUEUE_CHUNKS)
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._upload, name="kdumpy-s3-upload",
                                        daemon=True)
        self._thread.start()
        self.sink = FlatSink(_UploadStream(self))  # type: ignore[arg-type]

    def _upload(self) -> None:
        try:
            res = self.directory.client.put_object(
                self.directory.location.bucket, self.key, _ChunkReader(self._q, self._abandoned), length=-1,
                part_size=PART_SIZE, num_parallel_uploads=1,
                content_type="application/octet-stream")
            self.etag = res.etag
        except _Abandoned:
            self.error = OSError(errno.ECANCELED, f"{self.dest}: upload abandoned")
        except BaseException as exc:  # noqa: BLE001 - reported to the producer
            self.error = s3_error(exc, self.dest)
        finally:
            while True:            # unblock a producer waiting on a full queue
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break

    def _send(self, item: bytes | None | BaseException) -> None:
        while True:
            if self.error is not None or not self._thread.is_alive():
                raise self.error or OSError(errno.EIO, f"{self.dest}: uploader stopped")
            try:
                self._q.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def commit(self) -> str:
        """End marker, end of stream, wait for ``CompleteMultipartUpload``."""
        self.sink.close()
        self._send(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.dest

    def abandon(self) -> str | None:
        """Abort the upload: nothing of it stays visible."""
        self._abandoned.set()
        if self._thread.is_alive():
            try:
                self._q.put_nowait(_Abandoned())
            except queue.Full:
                pass
            self._thread.join(timeout=(CONNECT_TIMEOUT + READ_TIMEOUT) * ATTEMPTS)
        return None
