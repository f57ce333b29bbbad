# PyTorch peer of bench/conv.c: the same computation as one case of the C side
# (the LeNet-5 training step, or one conv2d forward+backward) on the data and
# weights the C side wrote to --file. Driven over stdin by the C side.
#
# Protocol: after two warm-up calls and three more counted ones it prints
#   ready ok=1 loss0=... loss1=... faults=... malloc=... torch_version=... threads=...
# (ok=0 and a reason when torch is missing), then answers each "run N" line
# with "ms t1 ... tN" (wall ms per call) until "quit" or end of input.
#
# faults: minor page faults per call. torch allocates every activation and
# gradient afresh each call, and glibc's malloc hands large blocks back to
# the kernel (munmap, heap trimming), so each call touches new pages; on
# this VM a fault costs 5 to 25 us, which made conv3x3_64's torch time swing
# between ~18 and ~145 ms from one session to the next. --malloc keep (the
# default) stops that with mallopt (no mmap below 32 MiB, no trimming), as
# carousel's arena keeps its memory; --malloc default measures torch as
# shipped. The convolutions themselves are oneDNN 2.6's jit:avx512_core
# direct kernels on 16-channel blocked layouts, with reorders to and from
# NCHW around each call (DNNL_VERBOSE=1 shows them).
import argparse
import os
import resource
import sys

from peer_torch import keep_malloc, serve


def take(torch, buf, off, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    t = torch.frombuffer(buf, dtype=dtype, count=n, offset=off).clone().reshape(shape)
    return t, off + n * 4


def lenet_case(torch, a, buf):
    """x [B,1,28,28] f32, targets [B] i32, then conv1.w, conv1.b, conv2.w, conv2.b,
    fc1.w, fc1.b, fc2.w, fc2.b, fc3.w, fc3.b; SGD lr 0.01 momentum 0.9."""
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(400, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.flatten(1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    m = LeNet5()
    off = 0
    x, off = take(torch, buf, off, torch.float32, (a.batch, 1, 28, 28))
    tgt, off = take(torch, buf, off, torch.int32, (a.batch,))
    tgt = tgt.long()
    with torch.no_grad():
        for p in m.parameters():  # conv1.weight, conv1.bias, conv2..., fc1..., in this order
            v, off = take(torch, buf, off, torch.float32, tuple(p.shape))
            p.copy_(v)
    if off != len(buf):
        raise ValueError(f"{a.file}: {len(buf)} bytes, expected {off}")
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(m(x), tgt)
        value = loss.item()
        loss.backward()
        opt.step()
        return value

    return step


def conv_case(torch, a, buf):
    """x [N,C,H,W], w [O,C,K,K], b [O] f32; y = conv2d(x, w, b, padding); backward of sum(y * 1)."""
    import torch.nn.functional as F
    off = 0
    x, off = take(torch, buf, off, torch.float32, (a.batch, a.cin, a.size, a.size))
    w, off = take(torch, buf, off, torch.float32, (a.cout, a.cin, a.kernel, a.kernel))
    b, off = take(torch, buf, off, torch.float32, (a.cout,))
    if off != len(buf):
        raise ValueError(f"{a.file}: {len(buf)} bytes, expected {off}")
    x.requires_grad_(a.input_grad == 1)
    w.requires_grad_(True)
    b.requires_grad_(True)

    def step():
        w.grad = None
        b.grad = None
        x.grad = None
        y = F.conv2d(x, w, b, padding=a.padding)
        y.backward(torch.ones_like(y))
        return float(w.grad.double().abs().sum())

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--case", choices=["lenet", "conv"], required=True)
    for k, v in [("batch", 64), ("cin", 1), ("cout", 6), ("size", 28), ("kernel", 5), ("padding", 0),
                 ("input-grad", 1), ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep")
    a = ap.parse_args()
    malloc = a.malloc
    if a.malloc == "keep" and not keep_malloc():
        malloc = "keep_failed"
    try:
        import torch
    except ImportError as e:  # the C side reports nan
        print(f"ready ok=0 reason=no_torch ({e})", flush=True)
        return 0
    torch.set_num_threads(a.threads)
    buf = bytearray(open(a.file, "rb").read())
    step = lenet_case(torch, a, buf) if a.case == "lenet" else conv_case(torch, a, buf)
    loss0 = step()
    loss1 = step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3
    print(f"ready ok=1 loss0={loss0:.9g} loss1={loss1:.9g} faults={faults:.0f} malloc={malloc} "
          f"threads={torch.get_num_threads()} "
          f"blis_threads={os.environ.get('BLIS_NUM_THREADS', '-')} "
          f"mkldnn={int(torch.backends.mkldnn.is_available())} torch_version={torch.__version__}", flush=True)
    serve(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
