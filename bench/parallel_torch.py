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

from peer_torch import Blob, LstmLM, import_torch, serve, step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    for k, v in [("batch", 64), ("steps", 64), ("embed", 64), ("hidden", 128), ("vocab", 65),
                 ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    a = ap.parse_args()
    torch = import_torch()
    if torch is None:
        return 0
    torch.set_num_threads(a.threads)
    # x [B,T] i32, targets [B*T] i32, then the weights in torch's order
    blob = Blob(torch, a.file)
    x, tgt = blob.ids(a.batch, a.steps), blob.ids(a.batch * a.steps)
    emb_w = blob.f32(a.vocab, a.embed)
    model = LstmLM(torch, blob.lstm(1, a.embed, a.hidden), blob.f32(a.vocab, a.hidden), blob.f32(a.vocab), emb_w)
    blob.end()
    opt = torch.optim.Adam(model.params, lr=a.lr)

    def clip():
        return float(torch.nn.utils.clip_grad_norm_(model.params, a.clip))

    def run_step():
        return step(torch, model, opt, x, tgt, clip)

    loss0, gnorm0 = run_step()
    run_step()
    print(f"ready ok=1 loss0={loss0:.9g} gnorm0={gnorm0:.9g} threads={torch.get_num_threads()} "
          f"omp={os.environ.get('OMP_NUM_THREADS', '-')} blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
          f"blis_arch={os.environ.get('BLIS_ARCH_TYPE', '-')} torch_version={torch.__version__}", flush=True)
    serve(run_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
