"""carousel-ckpt info on a file whose tensor name and metadata hold terminal
controls (C0, C1 such as U+009B CSI and U+0085 NEL, bidirectional overrides):
none may reach the output raw. Usage: ckpt_escape_check.py CAROUSEL-CKPT"""
import json, os, struct, subprocess, sys, tempfile

exe = sys.argv[1]
name = "w\u009b2J\u0085x\u202e\u2066y\u2028\x1b[31m\u00e9"
meta = {"k\u009d0;t\u0007": "v\u0090\u009c\u2029\u2069"}
hdr = json.dumps({"__metadata__": meta, name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                 ensure_ascii=False).encode()
hdr += b" " * (-len(hdr) % 8)
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "controls.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 4)
    r = subprocess.run([exe, "info", path], capture_output=True)
out = r.stdout.decode("utf-8")  # the escapes keep it valid UTF-8
print(out, end="")
bad = [c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
       or c in "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
ok = r.returncode == 0 and not bad
# the escapes are there, and an ordinary non-ASCII letter is printed as is
ok = ok and "w\\xc2\\x9b2J\\xc2\\x85x\\xe2\\x80\\xae\\xe2\\x81\\xa6y\\xe2\\x80\\xa8\\x1b[31m\u00e9" in out
ok = ok and "k\\xc2\\x9d0;t\\x07 = v\\xc2\\x90\\xc2\\x9c\\xe2\\x80\\xa9\\xe2\\x81\\xa9" in out
if not ok:
    print("raw controls in the output: %r" % bad if bad else "escapes missing from the output", file=sys.stderr)
sys.exit(0 if ok else 1)
