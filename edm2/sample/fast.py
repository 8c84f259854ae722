"""The sampling fast path: the denoiser run as a compiled graph (docs/evaluation.md#fast-path).

    denoiser = FastDenoiser(net, batch=32)           # CUDA: torch.compile mode "reduce-overhead" (CUDA graphs)
    edm_sampler(denoiser, noise, labels, ...)        # same call as with `net`

A forward of an EDM2 network launches about 1,700 small kernels, so sampling at the batch sizes
people generate with is bound by kernel launches, not arithmetic. Capturing the whole forward
as one CUDA graph (and fusing the memory-bound magnitude-preserving ops) removes that overhead.
The method is unchanged: the graph computes the same network on the same inputs; results equal
the eager ones up to floating-point rounding (fused kernels reorder sums), not bit for bit.

The fast path can never be what stops a run: when compiling or capturing fails (no C compiler
for Triton's launcher or Inductor's C++ code, pytorch/pytorch#116696; an unsupported GPU; a
capture error), `FastDenoiser` says why in one line and runs the network eagerly from then on.
"""

import time

import torch

DEFAULT_BACKEND = "inductor"  # torch.compile backend of FastDenoiser (tests of the plumbing use "eager")


def fast_by_default(device) -> bool:
    """Whether sampling uses the fast path when neither `--fast` nor `--eager` is given: on CUDA
    yes (launch-bound without it), on CPU no (compiling costs more than it saves there)."""
    return torch.device(device).type == "cuda"


class FastDenoiser:
    """A Precond called through `torch.compile`, one graph per input shape, for the sampler.

    `net(x, sigma, class_labels)` with x [N, C, R, R] float32, sigma a 0-dim tensor or [N], and
    class_labels [N, label_dim] or None -> D(x; sigma) [N, C, R, R] float32, like the eager net.

    batch: inputs with fewer rows are padded with zero rows up to `batch` and the extra rows of
    the output dropped, so a rank's batches (which may differ by one image, and the last partial
    one) share one graph; each row's result depends only on that row's inputs, as in the eager
    network (Precond has no operation that mixes samples). None: one graph per batch size.
    mode: torch.compile mode; default "reduce-overhead" (CUDA graphs) on CUDA, "default" elsewhere.
    backend: torch.compile backend (default `DEFAULT_BACKEND`, "inductor"; "eager" traces without
    generating kernels, for quick tests of the plumbing). log: called with one line per new graph (warm-up and capture
    time) or None.
    """

    def __init__(self, net, batch: int | None = None, mode: str | None = None, backend=None, log=print):
        device = next(net.parameters()).device
        if mode is None:
            mode = "reduce-overhead" if device.type == "cuda" else "default"
        self.net = net
        self.batch = batch
        self.mode = mode
        self.log = log
        # CUDA graphs reuse their output buffers on the next replay: the sampler keeps the
        # denoised batch while the guiding network runs, so the output is copied out.
        self._clone = mode == "reduce-overhead"
        # dynamic=False: one graph per shape (never a slower shape-generic one).
        self.model = torch.compile(net, mode=mode, dynamic=False, backend=backend or DEFAULT_BACKEND)
        # reduce-overhead runs the first call eagerly (warm-up) and captures on the second.
        self._warmup_calls = 2 if mode == "reduce-overhead" else 1
        self.warmup_seconds: dict[tuple, float] = {}  # input shape -> seconds of its first calls
        self._calls: dict[tuple, int] = {}
        self.fallback_reason: str | None = None  # why the fast path was given up, if it was

    def __getattr__(self, name):  # img_channels, img_resolution, label_dim, ... of the wrapped net
        if name == "net":
            raise AttributeError(name)
        return getattr(self.net, name)

    def __call__(self, x, sigma, class_labels=None):
        if self.fallback_reason is not None:  # the eager network, on the caller's own batch
            return self.net(x, sigma, class_labels)
        n = x.shape[0]
        args = (x, sigma, class_labels)
        if self.batch is not None and n < self.batch:
            args = _padded(self.batch, *args)
        key = tuple(args[0].shape)
        count = self._calls.get(key, 0)
        if count >= self._warmup_calls:
            out = self.model(*args)
        else:
            self._calls[key] = count + 1
            try:  # compiling and capturing happen in these first calls
                out = self._timed_call(key, *args)
            except Exception as e:  # the eager network below raises again if the inputs are at fault
                self._fall_back(e)
                return self.net(x, sigma, class_labels)
        if self._clone:
            out = out.clone()
        return out[:n] if out.shape[0] != n else out

    def _fall_back(self, error: Exception) -> None:
        self.fallback_reason = fallback_message(error)
        self.model, self._clone = self.net, False
        if self.log is not None:
            self.log(self.fallback_reason)
        _synchronize_safely(next(self.net.parameters()).device)

    def _timed_call(self, key, x, sigma, class_labels):
        _synchronize(x.device)
        start = time.perf_counter()
        out = self.model(x, sigma, class_labels)
        _synchronize(x.device)
        self.warmup_seconds[key] = self.warmup_seconds.get(key, 0.0) + time.perf_counter() - start
        if self._calls[key] == self._warmup_calls and self.log is not None:
            shape = "x".join(str(s) for s in key)
            what = "compiled and captured" if self._clone else "compiled"
            self.log(f"Fast path: {what} the denoiser for input {shape} in {self.warmup_seconds[key]:.1f} s")
        return out


def fallback_message(error: BaseException) -> str:
    """One line: why the fast path failed (the error's first line) and how to get it back."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
    hint = "see docs/evaluation.md#fast-path"
    if "compiler" in reason.lower():
        hint = "install a C and C++ compiler (gcc, g++) where Triton and Inductor find them (PATH, CC, CXX)"
    return (
        f"Fast path unavailable ({reason}); running the network eagerly (same results up to float rounding, "
        f"slower). To use the fast path: {hint}; --eager skips the attempt."
    )


def _padded(rows: int, x, sigma, class_labels):
    """The inputs with zero rows (sigma 1) appended up to `rows` (per-sample sigmas and labels too)."""
    n = x.shape[0]
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0 and sigma.numel() == n:
        sigma = _pad_rows(sigma.reshape(n), rows, value=1)
    if class_labels is not None and class_labels.ndim == 2 and class_labels.shape[0] == n:
        class_labels = _pad_rows(class_labels, rows)
    return _pad_rows(x, rows), sigma, class_labels


def _pad_rows(t: torch.Tensor, rows: int, value: float = 0) -> torch.Tensor:
    """`t` with rows of `value` appended along dim 0 up to `rows`."""
    pad = t.new_full([rows - t.shape[0], *t.shape[1:]], value)
    return torch.cat([t, pad])


def _synchronize_safely(device) -> None:
    """Wait for the device after a failed capture; an error there belongs to the capture."""
    try:
        _synchronize(device)
    except RuntimeError:
        pass


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
