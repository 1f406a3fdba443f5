"""WebDataset shards of flow pairs: writing one shard atomically, the manifest, and reading them back.

Layout under a shard URI (local folder or s3://bucket/prefix):

    {uri}/manifest.json               written last: shards, sample counts, config hash, flow encoding, versions
    {uri}/{train,val}/shard-{i:06d}.tar
    {uri}/{train,val}/shard-{i:06d}.tar.json    its sidecar, written after it: {"samples", "bytes"} (resume)
    sample `{video}_{t:06d}_{k}`: its members and their encoding are etc_core/data/shard_sample.py's (the flow:
    etc_core/data/flow_codec.py)

Readers: `iter_samples` (each sample once, numpy) and `make_loader` (a rank-aware torch DataLoader for training
and evaluation). s3:// shards are streamed through boto3 at the caller's `S3Access` (cfg.s3.access: endpoint and
region, handed to the gopen handler registered at import with every URL, so DataLoader workers use it too).
"""
from __future__ import annotations

import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds

from etc_core.data.base import IGNORE_INDEX
from etc_core.data.shard_sample import FIELDS, decode_sample, encode_sample, sample_key  # noqa: F401 (re-exported)
from etc_core.errors import ShardError, StorageError
from etc_core.storage import uri as storage
from etc_core.storage.tmp import owned_temp
from etc_core.storage.uri import S3Access

log = logging.getLogger(__name__)

FORMAT = "etc-shards-v1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
_SHUFFLE_BUFFER = 256


def flow_encoding(manifest: dict) -> str:
    """How a shard set stores its flow (flow_codec.ENCODINGS): the manifest's `flow_encoding`; sets written before
    it existed hold float16 npy."""
    return manifest.get("flow_encoding", "npy")


def shard_name(split: str, index: int) -> str:
    return f"{split}/shard-{index:06d}.tar"


# ----------------------------------------------------------------------------------------------- writing

def write_shard(samples: list[dict], url: str, endpoint_url: str | None = None, region: str | None = None) -> int:
    """Write samples as one tar and make it visible at url only when complete; return its size in bytes."""
    if storage.is_s3(url):
        tmp = owned_temp("etc-shard-", ".tar.tmp")  # a killed writer's is removed by the next writer
    else:
        os.makedirs(os.path.dirname(url), exist_ok=True)
        tmp = f"{url}.tmp.{os.getpid()}"
    try:
        with wds.TarWriter(tmp, mtime=0) as sink:  # mtime fixed: the same samples give the same bytes
            for sample in samples:
                sink.write(sample)
        nbytes = os.path.getsize(tmp)
        storage.put_file(tmp, url, endpoint_url, region)
        # after the shard: a sidecar is only ever trusted beside a shard of the size it states
        storage.put_bytes(json.dumps({"samples": len(samples), "bytes": nbytes}).encode(), sidecar_url(url),
                          endpoint_url, region)
    except storage.UriError as e:
        raise StorageError(str(e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return nbytes


def sidecar_url(url: str) -> str:
    """Where write_shard records a shard's sample count and size: `{url}.json`."""
    return f"{url}.json"


def finished_shard(url: str, endpoint_url: str | None = None, region: str | None = None) -> dict | None:
    """{"samples", "bytes"} of a shard that write_shard finished (its sidecar, and a shard of the size it states),
    else None. Reads the small sidecar and one stat / HEAD, never the shard itself."""
    try:
        info = json.loads(storage.read_bytes(sidecar_url(url), endpoint_url, region))
        return info if storage.size(url, endpoint_url, region) == info["bytes"] else None
    except (storage.UriError, ValueError, KeyError, TypeError):
        return None


def count_samples(url: str, endpoint_url: str | None = None, region: str | None = None) -> int | None:
    """Samples in a complete, readable shard, or None when it is missing, truncated or unreadable."""
    try:
        keys = set()
        with storage.open_read(url, endpoint_url, region) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isreg():
                    tar.extractfile(member).read()
                    keys.add(member.name.split(".", 1)[0])
        return len(keys)
    except (OSError, tarfile.TarError, EOFError):
        return None


def read_manifest(uri: str, endpoint_url: str | None = None, region: str | None = None) -> dict | None:
    """The manifest at {uri}/manifest.json, or None when there is none."""
    path = storage.join(uri, MANIFEST)
    try:
        if not storage.exists(path, endpoint_url, region):
            return None
        manifest = json.loads(storage.read_bytes(path, endpoint_url, region))
    except storage.UriError as e:
        raise StorageError(str(e)) from None
    except ValueError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def remove_shards(uri: str, endpoint_url: str | None = None, region: str | None = None) -> int:
    """Delete a shard set (manifest first, so no reader trusts a half-deleted set); returns files removed."""
    try:
        files = storage.list_files(uri, endpoint_url, region)
        manifest = storage.join(uri, MANIFEST)
        for path in sorted(files, key=lambda p: p != manifest):
            storage.remove(path, endpoint_url, region)
    except storage.UriError as e:
        raise StorageError(str(e)) from None
    log.info("removed %d files under %s", len(files), uri)
    return len(files)


def write_manifest(uri: str, manifest: dict, endpoint_url: str | None = None, region: str | None = None) -> None:
    try:
        storage.put_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode(), storage.join(uri, MANIFEST),
                          endpoint_url, region)
    except storage.UriError as e:
        raise StorageError(str(e)) from None


# ----------------------------------------------------------------------------------------------- reading

def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, endpoint_url: str | None = None,
              region: str | None = None):
    if mode != "rb":
        raise ValueError(f"{url}: s3 shards are read-only here (mode {mode!r})")
    return storage.open_read(url, endpoint_url, region)  # boto3 streaming body


wds.gopen_schemes["s3"] = _gopen_s3  # at import, so DataLoader workers have it too


def _tar_samples(src: Iterator[dict], s3: S3Access) -> Iterator[dict]:
    """webdataset's tarfile_to_samples, opening each URL at s3's endpoint (local paths: plain open)."""
    from webdataset import tariterators

    streams = tariterators.url_opener(src, handler=_raise_shard_error, **s3._asdict())
    files = tariterators.tar_file_expander(streams, handler=_raise_shard_error)
    return tariterators.group_by_keys(files, handler=_raise_shard_error)


def _reader_uri(uri: str) -> str:
    """uri as webdataset may open it: s3:// or an absolute local path. Any other scheme is refused: webdataset
    hands `pipe:` URLs to a shell and http/gs/... to external tools, and a shard URI comes from config or the
    command line."""
    if storage.is_s3(uri):
        return uri
    scheme = urlparse(uri).scheme
    if scheme not in ("", "file"):
        raise ShardError(f"{uri}: shard URIs are local paths or s3://bucket/prefix; scheme {scheme + ':'!r} refused")
    return os.path.abspath(uri.removeprefix("file://"))


def _member_url(uri: str, path: object) -> str:
    """A manifest's shard path joined onto uri; refused unless it is a plain relative path inside the set."""
    parts = str(path).replace("\\", "/").split("/")
    if (not isinstance(path, str) or not path or path.startswith("/") or ".." in parts or ":" in path
            or "\\" in path):
        raise ShardError(f"{storage.join(uri, MANIFEST)}: refusing shard path {path!r} (must be relative, inside "
                         f"the shard set)")
    return storage.join(uri, path)


def _shard_urls(uri: str, split: str, s3: S3Access) -> tuple[list[str], dict[str, int]]:
    uri = _reader_uri(uri)
    manifest = read_manifest(uri, *s3)
    if manifest is None:
        raise ShardError(f"{storage.join(uri, MANIFEST)}: not found (run pipelines/precompute_flow.py first)")
    if split not in manifest["splits"]:
        raise ShardError(f"{storage.join(uri, MANIFEST)}: no split {split!r} (have {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    urls = [_member_url(uri, s["path"]) for s in shards]
    return urls, {u: s["samples"] for u, s in zip(urls, shards)}


def _url_of(exn: BaseException) -> str | None:
    return next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)


def _raise_shard_error(exn: BaseException) -> bool:
    """wds handler: a tar/stream error becomes ShardError naming the shard (once webdataset has added the URL)."""
    if isinstance(exn, ShardError):
        raise exn
    url = _url_of(exn)
    if url is None:
        raise exn  # inner tar iterator: re-raised; the shard expander adds the URL and calls us again
    reason = str(exn.args[0]) if exn.args else type(exn).__name__
    raise ShardError(f"{url}: unreadable shard ({type(exn).__name__}: {reason.split(' @ ')[0]})") from None


def _check_counts(src: Iterator[dict], expected: dict[str, int]) -> Iterator[dict]:
    """Pass samples through; a shard that ends with fewer samples than the manifest says is truncated."""
    url, seen = None, 0
    for sample in src:
        if sample.get("__url__") != url:
            if url is not None and seen != expected.get(url, seen):
                raise ShardError(f"{url}: truncated shard ({seen} of {expected[url]} samples)")
            url, seen = sample.get("__url__"), 0
        seen += 1
        yield sample
    if url is not None and seen != expected.get(url, seen):
        raise ShardError(f"{url}: truncated shard ({seen} of {expected[url]} samples)")


def _decoded(src: Iterator[dict]) -> Iterator[dict]:
    for sample in src:
        yield decode_sample(sample)


def iter_samples(uri: str, split: str = "train", s3: S3Access = S3Access()) -> Iterator[dict]:
    """Every sample of split once, in manifest order: dicts with __key__, img0/img1 uint8 [H,W,3],
    flow float32 [2,H,W], label uint8 [H,W] or None, meta (dict). s3: cfg.s3.access for s3:// shards."""
    urls, expected = _shard_urls(uri, split, s3)
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), partial(_tar_samples, s3=s3),
                                partial(_check_counts, expected=expected), _decoded)
    yield from pipeline


def _split_by_rank(src: Iterator[dict], rank: int, world_size: int) -> Iterator[dict]:
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _worker_seed(rank: int) -> int:
    return rank * 1000 + _worker()[0]


class _Shuffle:
    """Sample shuffle buffer seeded by (seed, rank, worker, pass), so every worker and epoch differs."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank, self.passes = seed, rank, 0

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        self.passes += 1
        rng = random.Random(hash((self.seed, self.rank, _worker()[0], self.passes)))
        return wds.shuffle(_SHUFFLE_BUFFER, _SHUFFLE_BUFFER // 4, rng=rng)(src)


def _prepare(src: Iterator[dict], transform: Callable[[dict], dict] | None) -> Iterator[dict]:
    for sample in src:
        sample = decode_sample(sample)
        if sample["label"] is None:
            sample["label"] = np.full(sample["img0"].shape[:2], IGNORE_INDEX, np.uint8)
        yield transform(sample) if transform is not None else sample


def collate(samples: list[dict]) -> dict:
    """Decoded samples -> img0/img1 uint8 [B,3,H,W], flow float32 [B,2,H,W], label int64 [B,H,W], key list; and
    label1 int64 [B,H,W] (255 where a sample has none) and valid bool [B,H,W] when every sample has a mask."""
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.ascontiguousarray(s[name]) for s in samples]))

    batch = {"img0": stack("img0").permute(0, 3, 1, 2).contiguous(),
             "img1": stack("img1").permute(0, 3, 1, 2).contiguous(),
             "flow": stack("flow").float(), "label": stack("label").long(), "key": [s["__key__"] for s in samples]}
    if any(s.get("label1") is not None for s in samples):
        batch["label1"] = torch.from_numpy(np.stack([
            s["label1"] if s.get("label1") is not None else np.full(s["label"].shape, IGNORE_INDEX, np.uint8)
            for s in samples])).long()
    if all(s.get("valid") is not None for s in samples):
        batch["valid"] = stack("valid").bool()
    return batch


def _take_share(src: Iterator[dict], steps: int) -> Iterator[dict]:
    """Yield this DataLoader worker's share of `steps` batches, so the loader yields exactly `steps`."""
    worker, num_workers = _worker()
    share = steps // num_workers + (1 if worker < steps % num_workers else 0)
    for i, batch in enumerate(src):
        if i >= share:
            return
        yield batch


def make_loader(uri: str, split: str, batch_size: int, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                shuffle: bool = True, seed: int = 0, transform: Callable[[dict], dict] | None = None,
                steps_per_epoch: int | None = None, s3: S3Access = S3Access()) -> torch.utils.data.DataLoader:
    """A DataLoader over split's shards for one rank: dict batches img0/img1 uint8 [B,3,H,W] RGB, flow float32
    [B,2,H,W], label int64 [B,H,W] (255 = ignore), key list[str].

    steps_per_epoch set (training): shards resampled (rank-specific seeds) and exactly steps_per_epoch batches per
    rank, so DDP ranks stay in step. steps_per_epoch None (evaluation): each sample once, shards split across ranks
    (then across workers); the last batch may be smaller. `transform` runs per decoded numpy sample. s3:
    cfg.s3.access, where s3:// shards live.
    """
    urls, expected = _shard_urls(uri, split, s3)
    if not 0 <= rank < world_size:
        raise ValueError(f"make_loader: rank {rank} not in [0, {world_size})")
    if steps_per_epoch is not None:
        mine = urls[rank::world_size] if len(urls) >= world_size else urls
        stages = [wds.ResampledShards(mine, seed=seed, worker_seed=partial(_worker_seed, rank), deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls), partial(_split_by_rank, rank=rank, world_size=world_size),
                  wds.split_by_worker]
    stages.append(partial(_tar_samples, s3=s3))
    if steps_per_epoch is None:
        stages.append(partial(_check_counts, expected=expected))
    if shuffle:
        stages.append(_Shuffle(seed, rank))
    stages += [partial(_prepare, transform=transform),
               wds.batched(batch_size, collation_fn=collate, partial=steps_per_epoch is None)]
    if steps_per_epoch is not None:
        stages.append(partial(_take_share, steps=steps_per_epoch))
    pipeline = wds.DataPipeline(*stages)
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
