# PyTorch peer of bench/train.c (lstm_train, gru_train, dynet): the same model,
# weights and data, read from the safetensors file the C side wrote (parameters
# under carousel's names, data under data.*). Driven over stdin by the C side.
#
# Protocol: after its warm-up (first batch: loss0 and the gradient norm before
# clipping; second batch: loss1; one whole unit) it prints
#   ready ok=1 loss0=... loss1=... gnorm0=... torch_version=...
# (ok=0 and a reason when torch is missing), then answers each "run N" line
# with "ms t1 ... tN" (wall ms per unit) until "quit" or end of input.
import argparse
import json
import os
import re
import struct
import sys

from peer_torch import keep_malloc, serve


def read_safetensors(torch, path):
    buf = bytearray(open(path, "rb").read())
    (hlen,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + hlen])
    dt = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        n = 1
        for d in e["shape"]:
            n *= d
        t = torch.frombuffer(buf, dtype=dt[e["dtype"]], count=n, offset=8 + hlen + lo) if n else \
            torch.zeros(0, dtype=dt[e["dtype"]])
        out[name] = t.clone().reshape(e["shape"])
    return out


RNN_NAME = re.compile(r"^l(\d+)(_reverse)?\.([wb])_(ih|hh)$")


def load_params(torch, modules, tensors):
    """carousel's names to torch's: rnn.l0_reverse.w_ih -> rnn.weight_ih_l0_reverse."""
    with torch.no_grad():
        for name, t in tensors.items():
            if name.startswith("data."):
                continue
            mod, rest = name.split(".", 1)
            m = RNN_NAME.match(rest)
            attr = f"{'weight' if m.group(3) == 'w' else 'bias'}_{m.group(4)}_l{m.group(1)}{m.group(2) or ''}" \
                if m else rest
            getattr(modules[mod], attr).copy_(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--workload", choices=["charlm", "lm", "tagger"], required=True)
    ap.add_argument("--cell", default="lstm")
    for k in ["hidden", "batch", "threads", "chars"]:
        ap.add_argument("--" + k, type=int, required=True)
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:  # the C side reports nan
        print(f"ready ok=0 reason=no_torch ({e})", flush=True)
        return 0
    keep_malloc()  # torch at its best: no page faults on fresh blocks each step (peer_torch.py)
    torch.set_num_threads(a.threads)
    data = read_safetensors(torch, a.file)
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[a.cell]
    nb = max(int(k.split(".")[2]) for k in data if k.startswith("data.in.")) + 1
    ins = [data[f"data.in.{k}"].long() for k in range(nb)]
    tgts = [data[f"data.tgt.{k}"].long() for k in range(nb)]
    emb_w = data["emb.weight"]
    m = {"emb": torch.nn.Embedding(emb_w.shape[0], emb_w.shape[1])}
    if a.workload in ("charlm", "lm"):
        V = data["head.weight"].shape[0]
        m["rnn"] = rnn_cls(emb_w.shape[1], a.hidden, batch_first=True)
        m["head"] = torch.nn.Linear(a.hidden, V)
    else:
        V = data["head.weight"].shape[0]
        m["rnn"] = rnn_cls(emb_w.shape[1], a.hidden, batch_first=True, bidirectional=True)
        m["mlp"] = torch.nn.Linear(2 * a.hidden, data["mlp.weight"].shape[0])
        m["head"] = torch.nn.Linear(data["mlp.weight"].shape[0], V)
        if a.chars:
            cw = data["cemb.weight"]
            ch = data["crnn.l0.w_hh"].shape[1]
            m["cemb"] = torch.nn.Embedding(cw.shape[0], cw.shape[1])
            m["crnn"] = rnn_cls(cw.shape[1], ch, batch_first=True, bidirectional=True)
    load_params(torch, m, data)
    chars = {}
    for k, t in data.items():
        if k.startswith("data.chars."):
            _, _, b, j = k.split(".")
            chars[(int(b), int(j))] = t.long()
    params = [p for mod in m.values() for p in mod.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3) if a.workload == "charlm" else torch.optim.SGD(params, lr=0.1)

    def words(k):
        if not a.chars:
            return m["emb"](ins[k])
        vecs = []
        for j in range(ins[k].shape[1]):
            c = chars.get((k, j))
            if c is not None:
                _, hc = m["crnn"](m["cemb"](c))
                h_n = hc[0] if isinstance(hc, tuple) else hc
                vecs.append(h_n.reshape(1, -1))
            else:
                vecs.append(m["emb"](ins[k][:, j]))
        return torch.stack(vecs, 1)

    def batch_step(k, norm=False):
        opt.zero_grad()
        if a.workload == "tagger":
            y, _ = m["rnn"](words(k))
            r = m["head"](torch.tanh(m["mlp"](y)))
            loss = F.cross_entropy(r.reshape(-1, V), tgts[k], reduction="sum")
        else:
            y, _ = m["rnn"](m["emb"](ins[k]))
            loss = F.cross_entropy(m["head"](y).reshape(-1, V), tgts[k])
        value = loss.item()
        loss.backward()
        g = None
        if a.workload == "charlm":
            g = float(torch.nn.utils.clip_grad_norm_(params, 5.0))
        elif norm:
            g = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None) ** 0.5
        opt.step()
        return value, g

    def unit():
        for k in range(nb):
            batch_step(k)

    loss0, gnorm0 = batch_step(0, norm=True)
    loss1, _ = batch_step(1 % nb)
    unit()
    print(f"ready ok=1 loss0={loss0:.9g} loss1={loss1:.9g} gnorm0={gnorm0:.9g} "
          f"threads={torch.get_num_threads()} blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
          f"blis_arch={os.environ.get('BLIS_ARCH_TYPE', '-')} torch_version={torch.__version__}", flush=True)
    serve(unit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
