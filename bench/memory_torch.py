# PyTorch peer of bench/memory.c: one configuration of the char-LM training
# step (embedding 64, nn.LSTM hidden 512, linear head to 65 classes,
# cross-entropy, clip at 5, Adam) in this fresh process, on one thread.
# With --checkpoint 1 the sequence runs in segments of --segment steps through
# torch.utils.checkpoint (embedding, LSTM, head and loss of each segment are
# recomputed during backward), the same segments as the C side.
#
# Prints one line:
#   result side=torch T=... checkpoint=0|1 mb=... ms_min=... ms_med=... ms_max=... loss=... torch_version=...
# mb is the peak resident memory (ru_maxrss) after the steps minus the peak
# measured right after `import torch`, before the model is built.
import argparse
import resource
import sys
import time


def maxrss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("batch", 32), ("steps", 64), ("embed", 64), ("hidden", 512), ("vocab", 65),
                 ("checkpoint", 0), ("segment", 8), ("reps", 3), ("threads", 1), ("seed", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
        import torch.utils.checkpoint as ckpt
    except ImportError as e:  # the C side reports nan
        print(f"result side=torch ok=0 reason=no_torch ({e})", flush=True)
        return 0
    base = maxrss_kb()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    B, T, E, H, V = a.batch, a.steps, a.embed, a.hidden, a.vocab
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H, batch_first=True)
    head = torch.nn.Linear(H, V)
    params = list(emb.parameters()) + list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)

    def chunk(h, c, xs, ys):
        out, (h, c) = lstm(emb(xs), (h, c))
        loss = F.cross_entropy(head(out).reshape(-1, V), ys.reshape(-1), reduction="sum")
        return h, c, loss

    def step():
        opt.zero_grad()
        if a.checkpoint:
            h = torch.zeros(1, B, H)
            c = torch.zeros(1, B, H)
            total = 0
            for t0 in range(0, T, a.segment):
                xs, ys = x[:, t0:t0 + a.segment], y[:, t0:t0 + a.segment]
                h, c, part = ckpt.checkpoint(chunk, h, c, xs, ys, use_reentrant=False)
                total = total + part
            loss = total / (B * T)
        else:
            out, _ = lstm(emb(x))
            loss = F.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        value = loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return value

    loss = step()  # warm-up: Adam state, allocator caches, BLAS buffers
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    mb = (maxrss_kb() - base) / 1024.0
    times.sort()
    print(f"result side=torch T={T} checkpoint={a.checkpoint} ok=1 mb={mb:.1f} ms_min={times[0]:.2f} "
          f"ms_med={times[len(times) // 2]:.2f} ms_max={times[-1]:.2f} loss={loss:.6f} "
          f"base_mb={base / 1024.0:.1f} torch_version={torch.__version__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
