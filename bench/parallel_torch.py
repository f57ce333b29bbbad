# PyTorch peer of bench/parallel.c: the same char-LM training step
# (nn.Embedding -> nn.LSTM batch-first -> nn.Linear on every step,
# cross-entropy, backward, clip_grad_norm_, Adam) on the weights and data the
# C side wrote to --file. Driven over stdin by the C side.
#
# Protocol: after two warm-up steps it prints
#   ready ok=1 loss0=... gnorm0=... threads=... torch_version=...
# (ok=0 and a reason when torch is missing), then answers each "run N" line
# with "ms t1 ... tN" (wall ms per step) until "quit" or end of input.
import argparse
import os
import sys
import time


def load(torch, path, a):
    """x [B,T] i32, targets [B*T] i32, then the weights in torch's order."""
    buf = bytearray(open(path, "rb").read())
    off = 0

    def take(dtype, shape):
        nonlocal off
        n = 1
        for d in shape:
            n *= d
        t = torch.frombuffer(buf, dtype=dtype, count=n, offset=off).clone().reshape(shape)
        off += n * 4
        return t

    x = take(torch.int32, (a.batch, a.steps)).long()
    tgt = take(torch.int32, (a.batch * a.steps,)).long()
    G = 4 * a.hidden
    emb = take(torch.float32, (a.vocab, a.embed))
    w = [take(torch.float32, (G, a.embed)), take(torch.float32, (G, a.hidden)),
         take(torch.float32, (G,)), take(torch.float32, (G,))]
    head_w = take(torch.float32, (a.vocab, a.hidden))
    head_b = take(torch.float32, (a.vocab,))
    if off != len(buf):
        raise ValueError(f"{path}: {len(buf)} bytes, expected {off}")
    return x, tgt, emb, w, head_w, head_b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    for k, v in [("batch", 64), ("steps", 64), ("embed", 64), ("hidden", 128), ("vocab", 65),
                 ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:  # the C side reports nan
        print(f"ready ok=0 reason=no_torch ({e})", flush=True)
        return 0
    torch.set_num_threads(a.threads)
    x, tgt, emb_w, (w_ih, w_hh, b_ih, b_hh), head_w, head_b = load(torch, a.file, a)
    emb = torch.nn.Embedding(a.vocab, a.embed)
    lstm = torch.nn.LSTM(a.embed, a.hidden, batch_first=True)
    head = torch.nn.Linear(a.hidden, a.vocab)
    with torch.no_grad():
        emb.weight.copy_(emb_w)
        lstm.weight_ih_l0.copy_(w_ih)
        lstm.weight_hh_l0.copy_(w_hh)
        lstm.bias_ih_l0.copy_(b_ih)
        lstm.bias_hh_l0.copy_(b_hh)
        head.weight.copy_(head_w)
        head.bias.copy_(head_b)
    params = list(emb.parameters()) + list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)

    def step():
        opt.zero_grad()
        y, _ = lstm(emb(x))
        loss = F.cross_entropy(head(y).reshape(-1, a.vocab), tgt)
        value = loss.item()
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, a.clip))
        opt.step()
        return value, norm

    loss0, gnorm0 = step()
    step()
    print(f"ready ok=1 loss0={loss0:.9g} gnorm0={gnorm0:.9g} threads={torch.get_num_threads()} "
          f"omp={os.environ.get('OMP_NUM_THREADS', '-')} blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
          f"blis_arch={os.environ.get('BLIS_ARCH_TYPE', '-')} torch_version={torch.__version__}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter_ns()
            step()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        print("ms " + " ".join(f"{t:.4f}" for t in times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
