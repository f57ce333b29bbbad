# PyTorch peer of bench/overhead.c: the same chain of tiny ops (add, mul, tanh
# in turn, on 1- or 4-element f32 tensors, from a leaf requiring grad), forward
# + backward + freeing the graph, one thread, in process CPU time as the C side
# measures. Prints one `key=value` line.
#
#   /usr/bin/python3 bench/overhead_torch.py --ops 1000000 --reps 5 --size 1
import argparse
import statistics
import sys
import time


def chain(torch, x, ops):
    y = x
    for i in range(ops):
        r = i % 3
        if r == 0:
            y = y + x
        elif r == 1:
            y = y * x
        else:
            y = torch.tanh(y)
    return y


def one_rep(torch, x, ops):
    x.grad = None
    clock = time.process_time_ns
    w0 = time.perf_counter_ns()
    t0 = clock()
    y = chain(torch, x, ops)
    t1 = clock()
    y.backward(torch.ones_like(y))
    t2 = clock()
    del y  # frees the chain of autograd nodes
    t3 = clock()
    return t1 - t0, t2 - t1, t3 - t2, time.perf_counter_ns() - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=1000000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=1)
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:  # the C side reports nan
        print(f"torch_ns_per_op=nan reason=no_torch ({e})")
        return 0
    torch.set_num_threads(1)
    x = torch.full((args.size,), 0.5, dtype=torch.float32, requires_grad=True)
    one_rep(torch, x, min(args.ops, 30000))  # warm up the allocator and dispatcher
    totals, fwd, bwd, free, wall = [], [], [], [], []
    for _ in range(max(args.reps, 1)):
        f, b, d, w = one_rep(torch, x, args.ops)
        wall.append(w)
        fwd.append(f)
        bwd.append(b)
        free.append(d)
        totals.append(f + b + d)
    best = min(range(len(totals)), key=totals.__getitem__)
    n = args.ops
    print(f"torch_ns_per_op={totals[best] / n:.1f} torch_median_ns_per_op={statistics.median(totals) / n:.1f} "
          f"torch_fwd_ns={fwd[best] / n:.1f} torch_bwd_ns={bwd[best] / n:.1f} torch_free_ns={free[best] / n:.1f} "
          f"torch_version={torch.__version__} grad_x0={x.grad[0].item():.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
