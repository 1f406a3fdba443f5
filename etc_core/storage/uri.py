"""Local paths and s3:// URIs behind one small interface: join, exists/size, list, read, stream, atomic put.

S3 goes through boto3 (and, for Ray Train/Tune storage, pyarrow). Every stage builds its access once from the
config's `s3` section, `S3Access(endpoint_url, region)` (`EtcConfig.s3.access`), and hands it to every call here,
so no stage depends on an environment variable another stage set; a None endpoint falls back to boto3's own chain
(`AWS_ENDPOINT_URL`, then real AWS). Credentials only ever come from the environment / instance profile (the
boto3 and AWS SDK chains) and are never logged. This module imports nothing from the project.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import urlparse

log = logging.getLogger(__name__)

_MULTIPART_THRESHOLD = int(os.environ.get("ETC_S3_MULTIPART_THRESHOLD", 64 * 2**20))  # bytes; lower in tests
_PART_SIZE = 64 * 2**20


class UriError(OSError):
    """A location cannot be read or written; the message is one line naming the URI."""


class S3Access(NamedTuple):
    """Where S3 is (endpoint URL, region; None = the SDK's own lookup): the config's `s3` section, built once per
    stage and passed everywhere (`storage.exists(uri, *access)` where a function takes endpoint_url, region)."""

    endpoint_url: str | None = None
    region: str | None = None

    def filesystem(self, uri: str):
        """A pyarrow S3FileSystem at this endpoint for an s3:// uri (Ray Train/Tune `storage_filesystem`, with
        the path then given without its `s3://`); None for a local path. Credentials: the AWS SDK's chain."""
        if not is_s3(uri):
            return None
        from pyarrow import fs

        options: dict = {"region": self.region} if self.region else {}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            host = (parsed.netloc or parsed.path).rsplit("@", 1)[-1]  # user:password@ is no part of the address
            options.update(scheme=parsed.scheme or "https", endpoint_override=host)
        return fs.S3FileSystem(**options)


def storage_location(uri: str, access: S3Access) -> tuple[str, object]:
    """(storage_path, storage_filesystem) for Ray's RunConfig: an s3:// uri becomes bucket/prefix on a pyarrow
    filesystem at access's endpoint; a local path stays as it is, with no filesystem."""
    filesystem = access.filesystem(uri)
    return (uri[len("s3://"):] if filesystem is not None else uri), filesystem


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// prefix."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise UriError(f"{uri}: no bucket in S3 URI")
    return parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=8)
def _client(pid: int, endpoint_url: str | None, region: str | None):
    import boto3
    import botocore.config

    # One client per process (pid in the key): a client must not be shared across fork.
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"max_attempts": 3, "mode": "standard"}))


def s3_client(endpoint_url: str | None = None, region: str | None = None):
    """The boto3 S3 client of this process for (endpoint_url, region); None = boto3's own lookup."""
    return _client(os.getpid(), endpoint_url, region)


_AUTH_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
               "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


def _client_error(uri: str, what: str, e) -> UriError:
    """One line for a ClientError: the code, and for a refused signature or key a hint at the credentials."""
    code = e.response.get("Error", {}).get("Code", "?")
    hint = ": check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" if code in _AUTH_CODES else ""
    return UriError(f"{uri}: {what} failed ({code}{hint})")


def _s3_call(uri: str, what: str, fn, *args, **kwargs):
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as e:
        raise _client_error(uri, what, e) from None
    except S3UploadFailedError as e:  # upload_file's wrapper around the ClientError it got (its context)
        if isinstance(e.__context__, ClientError):
            raise _client_error(uri, what, e.__context__) from None
        raise UriError(f"{uri}: {what} failed ({e})") from None
    except BotoCoreError as e:
        raise UriError(f"{uri}: {what} failed ({type(e).__name__}: {e})") from None


def size(uri: str, endpoint_url: str | None = None, region: str | None = None) -> int | None:
    """Size in bytes of the file/object at uri, or None when it does not exist."""
    if not is_s3(uri):
        try:
            return os.stat(uri).st_size
        except FileNotFoundError:
            return None
    from botocore.exceptions import ClientError

    bucket, key = _split(uri)
    try:
        return s3_client(endpoint_url, region).head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _client_error(uri, "head", e) from None
    except Exception as e:  # noqa: BLE001 - endpoint unreachable etc.: one line naming the URI
        raise UriError(f"{uri}: head failed ({type(e).__name__}: {e})") from None


def exists(uri: str, endpoint_url: str | None = None, region: str | None = None) -> bool:
    return size(uri, endpoint_url, region) is not None


def list_files(prefix: str, endpoint_url: str | None = None, region: str | None = None) -> list[str]:
    """All files/objects under prefix (recursively), as full URIs, sorted."""
    if not is_s3(prefix):
        root = Path(prefix)
        return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    bucket, key = _split(prefix)
    key = key.rstrip("/") + "/" if key else ""
    paginator = s3_client(endpoint_url, region).get_paginator("list_objects_v2")
    out = []
    pages = _s3_call(prefix, "list", lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
    for page in pages:
        out += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
    return sorted(out)


def open_read(uri: str, endpoint_url: str | None = None, region: str | None = None) -> IO[bytes]:
    """A binary stream of uri; for S3 the streaming body of get_object (nothing downloaded first)."""
    if not is_s3(uri):
        try:
            return open(uri, "rb")
        except OSError as e:
            raise UriError(f"{uri}: cannot open ({e.strerror or e})") from None
    bucket, key = _split(uri)
    client = s3_client(endpoint_url, region)
    return _s3_call(uri, "get", client.get_object, Bucket=bucket, Key=key)["Body"]


def read_bytes(uri: str, endpoint_url: str | None = None, region: str | None = None) -> bytes:
    with open_read(uri, endpoint_url, region) as stream:
        return stream.read()


def put_file(local_path: str, uri: str, endpoint_url: str | None = None, region: str | None = None) -> None:
    """Make the finished local file visible at uri atomically (rename locally; one put or a completed multipart
    upload on S3, aborted on failure). The local file is moved (locally) or left in place (S3)."""
    if not is_s3(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path, uri)
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = _split(uri)
    # one PUT up to the threshold, else a multipart upload that boto3 completes, or aborts when a part fails (a
    # killed process leaves its parts: abort_multipart_uploads on the rerun)
    config = TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=_PART_SIZE)
    _s3_call(uri, "put", s3_client(endpoint_url, region).upload_file, local_path, bucket, key, Config=config)


def abort_multipart_uploads(prefix: str, endpoint_url: str | None = None, region: str | None = None) -> int:
    """Abort every unfinished multipart upload under an s3:// prefix (what a killed writer leaves: parts that no
    listing shows but the bucket keeps); returns how many. Only while no other run writes there (etc_core.locks)."""
    if not is_s3(prefix):
        return 0
    bucket, key = _split(prefix)
    key = key.rstrip("/") + "/" if key else ""
    client = s3_client(endpoint_url, region)
    paginator = client.get_paginator("list_multipart_uploads")
    pages = _s3_call(prefix, "list multipart uploads", lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
    uploads = [u for page in pages for u in page.get("Uploads", [])]
    for upload in uploads:
        _s3_call(f"s3://{bucket}/{upload['Key']}", "abort multipart upload", client.abort_multipart_upload,
                 Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(uploads)


def put_bytes(data: bytes, uri: str, endpoint_url: str | None = None, region: str | None = None) -> None:
    """Write data to uri atomically (temp file + rename locally, a single put on S3)."""
    if is_s3(uri):
        bucket, key = _split(uri)
        _s3_call(uri, "put", s3_client(endpoint_url, region).put_object, Bucket=bucket, Key=key, Body=data)
        return
    tmp = f"{uri}.tmp.{os.getpid()}"
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, uri)


def remove(uri: str, endpoint_url: str | None = None, region: str | None = None) -> None:
    """Delete the file/object at uri if it exists."""
    if is_s3(uri):
        bucket, key = _split(uri)
        _s3_call(uri, "delete", s3_client(endpoint_url, region).delete_object, Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)
