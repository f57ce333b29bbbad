#!/usr/bin/env python3
"""Write the seed files in fuzz/corpus/ (small valid and broken safetensors
files). They are committed; rerun this only to change them. The carousel-ckpt
smoke tests in tools/meson.build use them too."""
import json
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def pack(header, data=b"", pad=True, hlen=None):
    h = header if isinstance(header, bytes) else header.encode()
    if pad:
        h += b" " * (-len(h) % 8)
    n = len(h) if hlen is None else hlen
    return struct.pack("<Q", n) + h + data


def header(tensors, meta=None):
    """tensors: list of (name, dtype, shape, begin, end); JSON as carousel writes it."""
    obj = {}
    if meta:
        obj["__metadata__"] = meta
    for name, dt, shape, b, e in tensors:
        obj[name] = {"dtype": dt, "shape": shape, "data_offsets": [b, e]}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def main():
    os.makedirs(HERE, exist_ok=True)
    f32 = struct.pack("<6f", 1.5, -2.0, 3.25, 0.0, 1e-8, -7.0)
    f64 = struct.pack("<2d", 3.141592653589793, -1e300)
    i32 = struct.pack("<i", -123456)
    small = pack(header([("l0.w_ih", "F32", [2, 3], 0, 24),
                         ("analysis.x", "F64", [2], 24, 40),
                         ("scalar", "I32", [], 40, 44),
                         ("empty", "F32", [0, 5], 44, 44)],
                        {"step": "1000", "note": "h\u00e9llo \"q\""}),
                 f32 + f64 + i32)
    seeds = {
        "valid_small": small,
        "valid_empty": pack("{}"),
        # Another writer's layout: no padding, keys reordered, whitespace.
        "valid_foreign": pack('{ "b" : {"data_offsets":[8,16],"shape":[2],"dtype":"I32"},'
                              '"a":{"shape":[1,2],"dtype":"F32","data_offsets":[0,8]} }\n',
                              bytes(range(16)), pad=False),
        "bad_overlap": pack(header([("a", "F32", [2], 0, 8), ("b", "F32", [2], 4, 12)]),
                            bytes(12)),
        "bad_size": pack(header([("l0.w_ih", "F32", [4, 8], 0, 96)]), bytes(96)),
        "bad_dtype": pack(header([("a", "BF16", [2], 0, 4)]), bytes(4)),
        "bad_meta": pack('{"__metadata__":{"step":100}}'),
        "bad_dims": pack(header([("a", "F64", [1 << 40, 1 << 40, 1 << 40], 0, 0)])),
        "bad_json": pack('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]', bytes(8)),
        "bad_header_len": pack("{}", hlen=1 << 62),
        "truncated": small[:len(small) - 5],
    }
    for name, blob in seeds.items():
        with open(os.path.join(HERE, name + ".safetensors"), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
