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

from peer_torch import Blob, LstmLM, import_torch, serve, step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    for k, v in [("batch", 32), ("steps", 64), ("input", 256), ("hidden", 256), ("vocab", 64),
                 ("layers", 1), ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--optim", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--lr", type=float, default=0.1)
    a = ap.parse_args()
    torch = import_torch()
    if torch is None:
        return 0
    torch.set_num_threads(a.threads)
    # x [B,T,I] f32, targets [B*T] i32, then the weights in torch's order
    blob = Blob(torch, a.file)
    x, tgt = blob.f32(a.batch, a.steps, a.input), blob.ids(a.batch * a.steps)
    model = LstmLM(torch, blob.lstm(a.layers, a.input, a.hidden), blob.f32(a.vocab, a.hidden), blob.f32(a.vocab))
    blob.end()
    params = model.params
    opt = torch.optim.Adam(params, lr=a.lr) if a.optim == "adam" else torch.optim.SGD(params, lr=a.lr)

    def grad_norm():
        return sum(float(p.grad.double().pow(2).sum()) for p in params) ** 0.5

    loss0, gnorm0 = step(torch, model, opt, x, tgt, grad_norm)
    loss1, _ = step(torch, model, opt, x, tgt)
    print(f"ready ok=1 loss0={loss0:.9g} loss1={loss1:.9g} gnorm0={gnorm0:.9g} "
          f"threads={torch.get_num_threads()} blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
          f"blis_arch={os.environ.get('BLIS_ARCH_TYPE', '-')} torch_version={torch.__version__}", flush=True)
    serve(lambda: step(torch, model, opt, x, tgt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
