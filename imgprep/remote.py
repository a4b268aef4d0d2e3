"""Objects at a URL: `s3://bucket/prefix` (AWS or any S3-compatible store) and `http(s)://host/path`.

A small client on the standard library's `http.client`, written for what the loaders need and
nothing else: GET (whole or a byte range, streamed to a file), HEAD, LIST and PUT. Why our own and
not boto3 or obstore: every request must have a deadline, stalls and truncated bodies must be
retried like 5xx and throttling, and the last failure must be one line naming the URL and the
reason; a few hundred lines do that exactly, install nothing, and run in any process (DataLoader
workers included) without a runtime to fork.

Settings come from where a user already has them (as the AWS CLI reads them):
  credentials  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the profile
               (AWS_PROFILE, default "default") in AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials)
               or AWS_CONFIG_FILE (~/.aws/config), else, where botocore is installed, its whole
               chain (instance roles, SSO, web identity); AWS_NO_SIGN_REQUEST=1: anonymous
  region       AWS_REGION / AWS_DEFAULT_REGION / the profile's `region`; default us-east-1
  endpoint     AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / the profile's `endpoint_url` (an
               S3-compatible store: path-style addressing); default AWS (virtual-hosted)
Requests are signed with AWS Signature Version 4 (payloads of GETs unsigned, as the SDKs do).
"""

from __future__ import annotations

import configparser
import contextlib
import datetime
import hashlib
import hmac
import http.client
import io
import os
import random
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .errors import ImgprepError
from .fileio import is_url  # re-exported: `remote.is_url` is the name callers know

__all__ = ["is_url", "RemoteError", "Store", "Retry"]

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MULTIPART_PART = 64 << 20  # a file larger than this is put in parts of this size (S3: 5 MiB to 5 GiB)


class RemoteError(ImgprepError):
    """A request that failed for good (after its retries), or one that retrying cannot help (404, 403)."""

    def __init__(self, msg: str, status: int | None = None):
        super().__init__(msg)
        self.status = status


class _Transient(Exception):
    """A failure worth retrying: its message says what happened."""


@dataclass(frozen=True)
class Retry:
    """How requests are retried: `attempts` in all, waiting base * 2^k (up to `cap`) with jitter;
    `timeout`: seconds without a byte (connect, headers, or body) before a try is abandoned;
    `min_rate`: bytes/s below which a long body counts as stalled (its deadline is
    timeout + size / min_rate)."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0
    timeout: float = 30.0
    min_rate: float = 256 * 1024

    def wait(self, k: int) -> float:
        return min(self.cap, self.base * 2**k) * (0.5 + random.random() / 2)


# --- credentials and settings --------------------------------------------------------------------


def _profile_settings(env) -> dict:
    """The AWS profile's keys from the shared credentials and config files (credentials first)."""
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    home = os.path.expanduser("~")
    out: dict = {}
    for path, section in (
        (env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"), f"profile {profile}"),
        (env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"), profile),
    ):
        cp = configparser.RawConfigParser()
        try:
            cp.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise ImgprepError(f"{path}: unreadable AWS settings ({exc}); fix or remove it") from None
        for name in (section, profile) if section != profile else (profile,):
            if cp.has_section(name):
                out.update({k: v.strip() for k, v in cp.items(name)})
    out["profile"] = profile
    return out


@dataclass(frozen=True)
class S3Settings:
    access_key: str | None
    secret_key: str | None
    token: str | None
    region: str
    endpoint: str | None  # scheme://host[:port] of an S3-compatible store; None: AWS

    @classmethod
    def from_env(cls, env=None) -> S3Settings:
        env = os.environ if env is None else env
        prof = _profile_settings(env)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or prof.get("region") or "us-east-1"
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or prof.get("endpoint_url")
        if endpoint:
            u = urllib.parse.urlsplit(endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ImgprepError(f"AWS endpoint URL {endpoint!r}: not http(s)://host[:port]; fix AWS_ENDPOINT_URL")
        if env.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes"):
            return cls(None, None, None, region, endpoint)
        ak, sk, tok = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")
        if bool(ak) != bool(sk):
            missing = "AWS_SECRET_ACCESS_KEY" if ak else "AWS_ACCESS_KEY_ID"
            raise ImgprepError(f"AWS credentials: {missing} is not set (the other key is); set both")
        if not ak:
            ak, sk = prof.get("aws_access_key_id"), prof.get("aws_secret_access_key")
            tok = prof.get("aws_session_token")
        if not ak or not sk:
            ak, sk, tok = _botocore_credentials()
        if not ak or not sk:
            raise ImgprepError(
                "s3://: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                f"aws_access_key_id in ~/.aws/credentials for profile {prof['profile']!r}; for a public "
                "bucket set AWS_NO_SIGN_REQUEST=1)"
            )
        return cls(ak, sk, tok or None, region, endpoint)


def _botocore_credentials():
    """(key, secret, token) from botocore's credential chain where botocore is installed, else Nones."""
    try:
        import botocore.session
    except ImportError:
        return None, None, None
    try:
        c = botocore.session.get_session().get_credentials()
    except Exception:  # noqa: BLE001  any failure of an optional chain means: none found
        return None, None, None
    if c is None:
        return None, None, None
    f = c.get_frozen_credentials()
    return f.access_key, f.secret_key, f.token


def _sign(s: S3Settings, method: str, host: str, path: str, query: dict, headers: dict, payload_hash: str) -> None:
    """Add AWS Signature Version 4 headers to `headers` (in place)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers["x-amz-date"] = amz_date
    headers["x-amz-content-sha256"] = payload_hash
    if s.token:
        headers["x-amz-security-token"] = s.token
    signed = {"host": host, **{k.lower(): str(v).strip() for k, v in headers.items()}}
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(path, safe="/~"),
            "&".join(
                f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(str(v), safe='-_.~')}"
                for k, v in sorted(query.items())
            ),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{day}/{s.region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + s.secret_key).encode()
    for part in (day, s.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={s.access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    )


# --- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # the ETag, or for a server without one, Last-Modified; "" when neither is given


class Store:
    """The objects under one URL prefix. Keys are relative to it ("train/train-000000.tar")."""

    def __init__(self, url: str, retry: Retry | None = None, env=None):
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        u = urllib.parse.urlsplit(self.url)
        self.scheme = u.scheme.lower()
        self._local = threading.local()  # one keep-alive connection per thread
        if self.scheme == "s3":
            if not u.netloc:
                raise ImgprepError(f"{url}: no bucket; write s3://BUCKET/PREFIX")
            self.bucket, self.prefix = u.netloc, u.path.strip("/")
            self.s3 = S3Settings.from_env(env)
            if self.s3.endpoint:  # S3-compatible: path-style
                e = urllib.parse.urlsplit(self.s3.endpoint)
                self._conn_scheme, self._host = e.scheme, e.netloc
                self._base_path = (e.path.rstrip("/") + "/" + self.bucket).replace("//", "/")
            else:
                self._conn_scheme, self._host = "https", f"{self.bucket}.s3.{self.s3.region}.amazonaws.com"
                self._base_path = ""
        else:
            if not u.hostname:
                raise ImgprepError(f"{url}: no host")
            self.s3 = None
            self._conn_scheme, self._host = self.scheme, u.netloc
            self._base_path, self.prefix = u.path.rstrip("/"), ""

    def __getstate__(self):  # picklable for worker processes: connections are per process and thread
        d = dict(self.__dict__)
        d.pop("_local")
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._local = threading.local()

    def with_retry(self, retry: Retry) -> Store:
        """This store with other retry settings (its own connections)."""
        other = Store.__new__(Store)
        other.__setstate__({**self.__getstate__(), "retry": retry})
        return other

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _path(self, key: str) -> str:
        if self.s3 is not None:
            full = f"{self.prefix}/{key}" if self.prefix else key
            return f"{self._base_path}/{full}" if key or self.prefix else (self._base_path or "/")
        return f"{self._base_path}/{urllib.parse.quote(key)}"

    # -- one try ----------------------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self._conn_scheme == "https" else http.client.HTTPConnection
            c = cls(self._host, timeout=self.retry.timeout)
            self._local.conn = c
        return c

    def _drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def _send(self, method: str, path: str, query: dict, headers: dict, body: bytes | None):
        headers = dict(headers)
        if self.s3 is not None and self.s3.access_key:
            h = hashlib.sha256(body).hexdigest() if body is not None else "UNSIGNED-PAYLOAD"
            _sign(self.s3, method, self._host, path, query, headers, h)
        target = urllib.parse.quote(path, safe="/~") if self.s3 is not None else path
        if query:
            target += "?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
        c = self._conn()
        try:
            c.request(method, target, body=body, headers=headers)
            return c.getresponse()
        except (http.client.HTTPException, OSError) as exc:  # a kept-alive connection the server closed
            self._drop_conn()
            raise _Transient(_why(exc)) from None

    def _request(self, method: str, key: str, what: str, *, query=None, headers=None, body=None, handle, path=None):
        """Run one request with retries; `handle(response)` reads it (raising _Transient to retry).
        `path`: the request's path where it is not the key's (a bucket listing)."""
        url = self.url_of(key) if path is None else self.url
        last = ""
        for k in range(self.retry.attempts):
            if k:
                time.sleep(self.retry.wait(k - 1))
            try:
                r = self._send(method, path or self._path(key), query or {}, headers or {}, body)
                if r.status in _RETRY_STATUS:
                    r.read()
                    raise _Transient(f"HTTP {r.status}{_s3_code(r)}")
                if r.status >= 300:
                    detail = _error_text(r)
                    raise RemoteError(f"{url}: {what} failed: HTTP {r.status}{detail}{_hint(r.status)}", r.status)
                return handle(r)
            except _Transient as exc:
                self._drop_conn()
                last = str(exc)
        raise RemoteError(f"{url}: {what} failed after {self.retry.attempts} tries: {last}")

    # -- operations -------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        def handle(r):
            r.read()
            return ObjectInfo(int(r.getheader("Content-Length") or 0), _version(r))

        return self._request("HEAD", key, "HEAD", handle=handle)

    def get(
        self, key: str, start: int | None = None, stop: int | None = None, limit: int | None = None, if_match: str = ""
    ) -> bytes:
        """The object's bytes (or bytes [start, stop) of it); `limit`: the most it may hold (a
        larger object is refused unread: what a hostile store hands us is bounded); `if_match`: the
        ETag it must still have (else a RemoteError with status 412: it changed)."""
        buf = io.BytesIO()
        self._get_into(key, buf, None, limit, None if start is None else (start, stop), if_match)
        return buf.getvalue()

    def get_or_none(self, key: str, limit: int | None = None) -> bytes | None:
        """`get`, or None where the object does not exist (404)."""
        got = self.get_info(key, limit)
        return None if got is None else got[0]

    def get_info(self, key: str, limit: int | None = None) -> tuple[bytes, ObjectInfo] | None:
        """The object's bytes and their size and ETag (of this one response), or None where the
        object does not exist (404)."""
        buf = io.BytesIO()
        try:
            info = self._get_into(key, buf, None, limit, None)
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise
        return buf.getvalue(), info

    def get_to_file(self, key: str, f, expect_size: int | None = None, limit: int | None = None) -> ObjectInfo:
        """Stream the object into the open binary file `f` (rewound and truncated on each try);
        a body shorter or longer than its Content-Length (or than `expect_size`) is retried; one
        larger than `limit` is refused unread."""
        return self._get_into(key, f, expect_size, limit, None)

    def _get_into(self, key: str, f, expect_size: int | None, limit: int | None, span, if_match="") -> ObjectInfo:
        """GET into `f` (every try from its start); `span`: (start, stop) of a Range request."""
        headers = {} if span is None else {"Range": f"bytes={span[0]}-{'' if span[1] is None else span[1] - 1}"}
        if if_match:
            headers["If-Match"] = if_match

        def refuse(r, why: str):
            r.close()
            self._drop_conn()
            return RemoteError(f"{self.url_of(key)}: {why}", r.status)

        def handle(r):
            f.seek(0)
            f.truncate()
            n = r.getheader("Content-Length")
            n = int(n) if n is not None else None
            if limit is not None and (n is None or n > limit):
                size = "no length" if n is None else f"{n:,} bytes"
                raise refuse(
                    r,
                    f"{size}, more than the {limit:,} such a file can hold; not a dataset imgprep wrote "
                    "(or a damaged one)",
                )
            if expect_size is not None and n is not None and n != expect_size:
                raise refuse(
                    r,
                    f"{n:,} bytes, the manifest says {expect_size:,} (replaced or truncated in the bucket); "
                    "upload the dataset again",
                )
            if span is not None and r.status != 206:
                raise refuse(r, f"the server ignored the Range request (HTTP {r.status})")
            got = _copy(r, f, self.retry, n if n is not None else expect_size)
            return ObjectInfo(got, _version(r))

        return self._request("GET", key, "GET", headers=headers, handle=handle)

    def head_or_none(self, key: str) -> ObjectInfo | None:
        """`head`, or None where the object does not exist (404)."""
        try:
            return self.head(key)
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    def put(self, key: str, data: bytes) -> None:
        def handle(r):
            r.read()

        self._request("PUT", key, "PUT", headers={"Content-Length": str(len(data))}, body=data, handle=handle)

    def put_if(self, key: str, data: bytes, if_match: str = "") -> str | None:
        """A conditional write: create the object only where none exists (`if_match` empty: S3's
        If-None-Match: *), or replace it only while it still has the ETag `if_match`. Returns the
        new ETag, or None where the condition did not hold (412; 409 where a concurrent conditional
        write is still under way). A store that ignores the condition writes unconditionally."""
        headers = {"Content-Length": str(len(data))}
        headers.update({"If-Match": if_match} if if_match else {"If-None-Match": "*"})

        def handle(r):
            r.read()
            return r.getheader("ETag") or ""

        try:
            return self._request("PUT", key, "conditional PUT", headers=headers, body=data, handle=handle)
        except RemoteError as exc:
            if exc.status in (409, 412):
                return None
            raise

    def put_checked(self, key: str, data: bytes, md5: str | None = None) -> str:
        """Put `data` at `key` and check what the store then holds: its size, and the ETag, which
        S3 makes the MD5 of a single-part upload (`md5`: the data's, where the caller has it).
        Returns the MD5."""
        md5 = md5 or hashlib.md5(data, usedforsecurity=False).hexdigest()
        self.put(key, data)
        got = self.head(key)
        etag = got.etag.strip('"')
        if got.size != len(data) or ("-" not in etag and etag and etag != md5):
            raise ImgprepError(
                f"{self.url_of(key)}: the store holds {got.size:,} bytes (ETag {got.etag}) after a put of "
                f"{len(data):,} (MD5 {md5}); run the same command again"
            )
        return md5

    def put_file_checked(self, key: str, path: str, md5: str | None = None) -> str:
        """Put the file at `path`: in one request up to MULTIPART_PART bytes (checked as
        `put_checked`; `md5`: the file's, where the caller has it), else as a multipart upload of
        parts of that size, each retried on its own and only one part in memory; the result is
        checked by size and by the ETag S3 gives a multipart object (`multipart_etag`). Returns
        the ETag expected (the MD5 of a single-part object); a failed upload is aborted."""
        size = os.path.getsize(path)
        if size <= MULTIPART_PART:
            with open(path, "rb") as f:
                return self.put_checked(key, f.read(), md5)
        upload_id = self._multipart("POST", key, {"uploads": ""}).findtext("{*}UploadId") or ""
        if not upload_id:
            raise RemoteError(f"{self.url_of(key)}: the store gave no UploadId for a multipart upload")
        parts, digests = [], []
        try:
            with open(path, "rb") as f:
                for n in range(1, -(-size // MULTIPART_PART) + 1):
                    data = f.read(MULTIPART_PART)
                    digests.append(hashlib.md5(data, usedforsecurity=False).digest())
                    etag = self._part(key, upload_id, n, data, digests[-1].hex())
                    parts.append(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>")
            body = f"<CompleteMultipartUpload>{''.join(parts)}</CompleteMultipartUpload>".encode()
            done = self._multipart("POST", key, {"uploadId": upload_id}, body)
            if done.tag.endswith("Error"):  # S3 may answer 200 and an error in the body
                raise RemoteError(
                    f"{self.url_of(key)}: completing the multipart upload failed: {done.findtext('Code')}; "
                    "run the same command again"
                )
        except BaseException:
            with contextlib.suppress(ImgprepError):
                self._multipart("DELETE", key, {"uploadId": upload_id})
            raise
        want = multipart_etag(digests)
        got = self.head(key)
        if got.size != size or got.etag.strip('"') != want:
            raise ImgprepError(
                f"{self.url_of(key)}: the store holds {got.size:,} bytes (ETag {got.etag}) after a multipart "
                f"put of {size:,} (expected ETag {want}); run the same command again"
            )
        return want

    def _part(self, key: str, upload_id: str, n: int, data: bytes, md5: str) -> str:
        def handle(r):
            r.read()
            etag = r.getheader("ETag") or ""
            if etag.strip('"') != md5:
                raise _Transient(f"part {n} stored with ETag {etag!r}, not its MD5")
            return etag

        q = {"partNumber": str(n), "uploadId": upload_id}
        return self._request("PUT", key, f"PUT part {n}", query=q, headers={"Content-Length": str(len(data))},
                             body=data, handle=handle)  # fmt: skip

    def _multipart(self, method: str, key: str, query: dict, body: bytes = b""):
        def handle(r):
            text = r.read()
            if not text.strip():
                return ET.Element("Empty")
            try:
                return ET.fromstring(text)
            except ET.ParseError:
                raise _Transient("an answer that is not XML") from None

        headers = {"Content-Length": str(len(body))}
        return self._request(method, key, "multipart upload", query=query, headers=headers, body=body, handle=handle)

    def delete(self, key: str) -> None:
        """Remove the object (S3 answers 204 whether or not it was there)."""

        def handle(r):
            r.read()

        self._request("DELETE", key, "DELETE", handle=handle)

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        """(key relative to the store, size) of every object under `prefix` (S3 only)."""
        if self.s3 is None:
            raise ImgprepError(f"{self.url}: an HTTP server cannot be listed; give an s3:// URL")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": full}
            if token:
                q["continuation-token"] = token

            def handle(r):
                body = r.read()
                try:
                    return ET.fromstring(body)
                except ET.ParseError:
                    raise _Transient("a listing that is not XML") from None

            root = self._request("GET", "", "LIST", query=q, handle=handle, path=self._base_path or "/")
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            cut = len(self.prefix) + 1 if self.prefix else 0
            for c in root.findall(f"{ns}Contents"):
                out.append((c.findtext(f"{ns}Key")[cut:], int(c.findtext(f"{ns}Size") or 0)))
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return out


# --- reading bodies ------------------------------------------------------------------------------


def multipart_etag(digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object whose parts have these MD5 digests."""
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def file_etag(path: str) -> str:
    """The ETag S3 gives the file at `path` once `Store.put_file_checked` has put it (quotes off):
    its MD5, or for a file over MULTIPART_PART the multipart one."""
    digests = []
    with open(path, "rb") as f:
        while data := f.read(MULTIPART_PART):
            digests.append(hashlib.md5(data, usedforsecurity=False).digest())
    if len(digests) <= 1:
        return (digests[0] if digests else hashlib.md5(b"", usedforsecurity=False).digest()).hex()
    return multipart_etag(digests)


def _copy(r, f, retry: Retry, n: int | None) -> int:
    """Copy a response body to `f`: each read waits at most retry.timeout (the socket's timeout),
    the whole body at most timeout + n / min_rate; a short body is a _Transient."""
    deadline = time.monotonic() + retry.timeout + (n or 0) / retry.min_rate
    got = 0
    try:
        while True:
            chunk = r.read(1 << 20) if n is None else r.read(min(1 << 20, n - got)) if n > got else b""
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
            if time.monotonic() > deadline:
                raise _Transient(
                    f"too slow: {got:,} of {n or 0:,} bytes in {retry.timeout + (n or 0) / retry.min_rate:.0f} s"
                )
    except (http.client.HTTPException, OSError) as exc:
        raise _Transient(_why(exc)) from None
    if n is not None and got != n:
        raise _Transient(f"the body ended after {got:,} of {n:,} bytes")
    return got


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running? check the endpoint URL)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the body ended after {len(exc.partial):,} bytes"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _version(r) -> str:
    return (r.getheader("x-amz-version-id") or "") + (r.getheader("ETag") or r.getheader("Last-Modified") or "")


def _s3_code(r) -> str:
    code = r.getheader("x-amz-error-code")
    return f" ({code})" if code else ""


def _error_text(r) -> str:
    """' (Code: Message)' from an S3 error body, or ''."""
    try:
        body = r.read(64 * 1024)
        root = ET.fromstring(body)
    except (ET.ParseError, OSError, http.client.HTTPException):
        return ""
    code, msg = root.findtext("Code"), root.findtext("Message")
    return f" ({code}: {msg})" if code and msg else f" ({code})" if code else ""


def _hint(status: int) -> str:
    if status == 404:
        return "; check the URL (is the dataset uploaded there?)"
    if status in (401, 403):
        return "; check the AWS credentials, the region and the bucket's permissions"
    return ""
