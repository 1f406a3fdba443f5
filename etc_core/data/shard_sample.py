"""One shard sample: its tar members, and how a sample is encoded for writing and decoded after reading.

A sample `{video}_{t:06d}_{k}` holds img0.png (frame t, RGB), img1.png (frame t+k), the flow (`flow.png` or
`flow.npy`: etc_core/data/flow_codec.py), meta.json, and optionally label.png (uint8, 255 = ignore; only when
frame t is labelled), label1.png (frame t+k) and valid.png (evaluation splits). docs/shards.md describes them all.
"""
from __future__ import annotations

import json

import numpy as np

from etc_core.data import flow_codec
from etc_core.data.png import decode_png
from etc_core.errors import ShardError

FIELDS = ("img0.png", "img1.png", "meta.json")  # and one flow member; label.png, label1.png, valid.png are optional


def sample_key(video: str, t: int, k: int) -> str:
    return f"{video}_{t:06d}_{k}"


def encode_sample(key: str, img0: np.ndarray, img1: np.ndarray, flow: np.ndarray, label: np.ndarray | None,
                  meta: dict, label1: np.ndarray | None = None, valid: np.ndarray | None = None,
                  flow_encoding: str = "npy") -> dict:
    """One WebDataset sample: img0/img1 uint8 [H,W,3], flow float [2,H,W] (stored in flow_encoding: `{key}.flow.png`,
    or `{key}.flow.npy` float16, also for a png16 pair out of KITTI's range), label (frame t) and label1 (frame t+k)
    uint8 [H,W], valid bool [H,W] (stored 255 = visible in both frames, 0 = not)."""
    field, data = flow_codec.encode_flow(flow, flow_encoding)
    sample = {"__key__": key, "img0.png": img0, "img1.png": img1, field: data, "meta.json": meta}
    if label is not None:
        sample["label.png"] = label
    if label1 is not None:
        sample["label1.png"] = label1
    if valid is not None:
        sample["valid.png"] = np.asarray(valid, bool).astype(np.uint8) * 255
    return sample


def decode_sample(sample: dict) -> dict:
    """Raw tar members -> {__key__, img0, img1 uint8 [H,W,3], flow float32 [2,H,W], label, label1 uint8 [H,W] | None,
    valid bool [H,W] | None, meta}."""
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    if ".." in key or key.startswith("/") or "\\" in key:
        raise ShardError(f"{url}: refusing member name {key!r} (absolute or '..' path)")
    flow_field = flow_codec.flow_member(sample)
    for field in (*FIELDS[:2], flow_field or "flow.{png,npy}", *FIELDS[2:]):
        if field not in sample:
            raise ShardError(f"{url}: member {key}.{field} missing")
    field = "?"
    try:
        field = "img0.png"
        img0 = decode_png(sample[field], "RGB")
        field = "img1.png"
        img1 = decode_png(sample[field], "RGB")
        field = flow_field
        flow = flow_codec.decode_flow(field, sample[field])
        field = "label.png"
        label = decode_png(sample[field], "L") if field in sample else None
        field = "label1.png"
        label1 = decode_png(sample[field], "L") if field in sample else None
        field = "valid.png"
        valid = decode_png(sample[field], "L") > 127 if field in sample else None
        field = "meta.json"
        meta = json.loads(sample[field])
    except (OSError, ValueError) as e:
        raise ShardError(f"{url}: member {key}.{field} unreadable ({type(e).__name__}: {e})") from None
    shape = img0.shape[:2]
    maps = {"label": label, "label1": label1, "valid": valid}
    if img1.shape != img0.shape or flow.shape != (2, *shape) or any(m is not None and m.shape != shape
                                                                     for m in maps.values()):
        sizes = ", ".join(f"{n} {m.shape}" for n, m in maps.items() if m is not None)
        raise ShardError(f"{url}: member {key}: shapes img0 {img0.shape}, img1 {img1.shape}, flow {flow.shape}, "
                         f"{sizes} disagree")
    return {"__key__": key, "__url__": url, "img0": img0, "img1": img1, "flow": flow, **maps, "meta": meta}
