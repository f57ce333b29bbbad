# The Python half of bench/peer.h, shared by the PyTorch peers of bench/lstm.c
# and bench/parallel.c: torch or the ready line saying why not, the C side's
# weights and data read from its file, the LSTM language model holding them
# ([nn.Embedding ->] nn.LSTM batch-first -> nn.Linear on every step,
# cross-entropy), one training step, and the answers to "run N" on stdin.
import sys
import time


def keep_malloc():
    """No mmap for blocks below 32 MiB (glibc's largest threshold) and no heap
    trimming: freed memory stays mapped for the next call. True if both took."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def import_torch():
    """torch, or None once the ready line telling the C side it is missing is printed."""
    try:
        import torch
        import torch.nn.functional  # noqa: F401 (the loss)
    except ImportError as e:  # the C side reports nan
        print(f"ready ok=0 reason=no_torch ({e})", flush=True)
        return None
    keep_malloc()  # torch at its best: no page faults on fresh blocks each step
    return torch


class Blob:
    """The C side's file: arrays of 4-byte elements (f32 or i32), one after another."""

    def __init__(self, torch, path):
        self.torch, self.path = torch, path
        self.buf = bytearray(open(path, "rb").read())
        self.off = 0

    def take(self, dtype, *shape):
        n = 1
        for d in shape:
            n *= d
        t = self.torch.frombuffer(self.buf, dtype=dtype, count=n, offset=self.off).clone().reshape(shape)
        self.off += n * 4
        return t

    def f32(self, *shape):
        return self.take(self.torch.float32, *shape)

    def ids(self, *shape):
        """i32 in the file, int64 (torch's index type) here"""
        return self.take(self.torch.int32, *shape).long()

    def lstm(self, layers, in_size, hidden):
        """[w_ih (4H, I or H), w_hh (4H, H), b_ih (4H), b_hh (4H)] per layer, torch's gate order"""
        G = 4 * hidden
        return [[self.f32(G, in_size if layer == 0 else hidden), self.f32(G, hidden), self.f32(G), self.f32(G)]
                for layer in range(layers)]

    def end(self):
        """Every byte read, or the file does not match the flags."""
        if self.off != len(self.buf):
            raise ValueError(f"{self.path}: {len(self.buf)} bytes, expected {self.off}")


class LstmLM:
    """[nn.Embedding ->] nn.LSTM (batch-first) -> nn.Linear on every step, with the C side's weights."""

    def __init__(self, torch, lstm_w, head_w, head_b, emb_w=None):
        vocab, hidden = head_w.shape
        self.vocab = vocab
        self.emb = torch.nn.Embedding(*emb_w.shape) if emb_w is not None else None
        self.lstm = torch.nn.LSTM(lstm_w[0][0].shape[1], hidden, num_layers=len(lstm_w), batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)
        with torch.no_grad():
            if self.emb is not None:
                self.emb.weight.copy_(emb_w)
            for layer, ws in enumerate(lstm_w):
                for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ws):
                    getattr(self.lstm, f"{name}_l{layer}").copy_(w)
            self.head.weight.copy_(head_w)
            self.head.bias.copy_(head_b)
        modules = ([self.emb] if self.emb is not None else []) + [self.lstm, self.head]
        self.params = [p for m in modules for p in m.parameters()]

    def loss(self, torch, x, targets):
        """mean cross-entropy of the next-token logits [B*T, V] against targets [B*T]"""
        y, _ = self.lstm(self.emb(x) if self.emb is not None else x)
        return torch.nn.functional.cross_entropy(self.head(y).reshape(-1, self.vocab), targets)


def step(torch, model, opt, x, targets, after_backward=None):
    """One training step; returns the loss and what after_backward (norm, clipping) returned."""
    opt.zero_grad()
    loss = model.loss(torch, x, targets)
    value = loss.item()
    loss.backward()
    extra = after_backward() if after_backward else None
    opt.step()
    return value, extra


def serve(run_step):
    """Answer each "run N" line with "ms t1 ... tN" (wall ms per step) until "quit" or end of input."""
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter_ns()
            run_step()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        print("ms " + " ".join(f"{t:.4f}" for t in times), flush=True)
