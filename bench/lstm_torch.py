# PyTorch peer of bench/lstm.c: the same training step (nn.LSTM batch-first +
# nn.Linear head on every step, cross-entropy, backward, SGD or Adam) on the
# weights and data the C side wrote to --file. Driven over stdin by the C side.
#
# Protocol: after two warm-up steps it prints
#   ready ok=1 loss0=... loss1=... gnorm0=... torch_version=...
# (ok=0 and a reason when torch is missing), then answers each "run N" line
# with "ms t1 ... tN" (wall ms per step) until "quit" or end of input.
import argparse
import os
import sys
import time


def load(torch, path, a):
    """x [B,T,I] f32, targets [B*T] i32, then the weights in torch's order."""
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

    x = take(torch.float32, (a.batch, a.steps, a.input))
    tgt = take(torch.int32, (a.batch * a.steps,)).long()
    G = 4 * a.hidden
    lstm_w = []
    for layer in range(a.layers):
        i = a.input if layer == 0 else a.hidden
        lstm_w.append([take(torch.float32, (G, i)), take(torch.float32, (G, a.hidden)),
                       take(torch.float32, (G,)), take(torch.float32, (G,))])
    head_w = take(torch.float32, (a.vocab, a.hidden))
    head_b = take(torch.float32, (a.vocab,))
    if off != len(buf):
        raise ValueError(f"{path}: {len(buf)} bytes, expected {off}")
    return x, tgt, lstm_w, head_w, head_b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    for k, v in [("batch", 32), ("steps", 64), ("input", 256), ("hidden", 256), ("vocab", 64),
                 ("layers", 1), ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--optim", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--lr", type=float, default=0.1)
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:  # the C side reports nan
        print(f"ready ok=0 reason=no_torch ({e})", flush=True)
        return 0
    torch.set_num_threads(a.threads)
    x, tgt, lstm_w, head_w, head_b = load(torch, a.file, a)
    lstm = torch.nn.LSTM(a.input, a.hidden, num_layers=a.layers, batch_first=True)
    head = torch.nn.Linear(a.hidden, a.vocab)
    with torch.no_grad():
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(lstm_w):
            getattr(lstm, f"weight_ih_l{layer}").copy_(w_ih)
            getattr(lstm, f"weight_hh_l{layer}").copy_(w_hh)
            getattr(lstm, f"bias_ih_l{layer}").copy_(b_ih)
            getattr(lstm, f"bias_hh_l{layer}").copy_(b_hh)
        head.weight.copy_(head_w)
        head.bias.copy_(head_b)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=a.lr) if a.optim == "adam" else torch.optim.SGD(params, lr=a.lr)

    def step(norm=False):
        opt.zero_grad()
        y, _ = lstm(x)
        loss = F.cross_entropy(head(y).reshape(-1, a.vocab), tgt)
        value = loss.item()
        loss.backward()
        g = None
        if norm:
            g = sum(float(p.grad.double().pow(2).sum()) for p in params) ** 0.5
        opt.step()
        return value, g

    loss0, gnorm0 = step(norm=True)
    loss1, _ = step()
    print(f"ready ok=1 loss0={loss0:.9g} loss1={loss1:.9g} gnorm0={gnorm0:.9g} "
          f"threads={torch.get_num_threads()} blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
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
