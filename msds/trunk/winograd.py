"""The trunk's wide 3x3 convolutions on the CPU by Winograd's F(4x4, 3x3).

On the CPU, oneDNN's direct float32 convolution already runs near the
processor's peak arithmetic rate, so the trunk can only get faster by doing
less arithmetic. Winograd's minimal filtering computes each 4x4 block of
outputs from a 6x6 block of inputs with 36 multiplications per channel pair
instead of 144: the input blocks and the 3x3 filters are each carried into a
6x6 "transformed" space by fixed linear maps, multiplied there elementwise,
which over channels is 36 independent matrix products, and carried back. The
result is the same convolution; only the rounding differs (the transforms'
coefficients, up to 8 in size, make it a few times the direct sum's rounding:
tests/helpers.py bounds it).

The products are one batched GEMM, each transform one matrix product over
every block (by the Kronecker products of the 1-D transforms), done in
chunks of tiles small enough to stay in cache, in buffers reused across
chunks, with one strided copy in and one out per chunk. It pays (bench/cpu.py's trunk workloads time
it beside the direct convolutions) on layers with at least 128 input
channels; the first layers, 3 or 64 channels wide at full resolution, stay
direct, as does everything that is not float32 on the CPU; `applies` says
where else the layer runs as itself.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.nn.modules import module as _module

OUT = 4  # output block side
IN = OUT + 2  # input block side for a 3x3 filter
POINTS = IN * IN

# F(4x4, 3x3) on the interpolation points 0, 1, -1, 2, -2 and infinity:
# the input transform B^T, the filter transform G and the output transform A^T.
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))

MIN_CHANNELS = 128  # narrower layers run direct (slower by Winograd on a 2-core EPYC)
# Tiles per chunk times input channels: keeps each chunk's buffers (36 x
# tiles x channels floats, about 9 MiB) inside the cache and below glibc's
# mmap threshold, so they are neither refetched nor refaulted per call.
CHUNK_ELEMENTS = 64 * 1024


@functools.lru_cache(maxsize=None)
def matrices(dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B^T (6 x 6), G (6 x 3) and A^T (4 x 6), made once per dtype (callers never write to them)."""
    return tuple(torch.tensor(m, dtype=dtype) for m in (_BT, _G, _AT))


@functools.lru_cache(maxsize=None)
def block_matrices(dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """B^T (x) B^T (36 x 36) and A^T (x) A^T (16 x 36): each transform of a
    whole block in one matrix product (exact: their entries are integers)."""
    bt, _, at = matrices()
    return torch.kron(bt, bt).to(dtype), torch.kron(at, at).to(dtype)


def filter_transform(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) filters -> (36, C_in, C_out) transformed, in the weight's dtype.

    Computed in float64 and rounded once, so the 1/6 and 1/24 of G add no
    rounding of their own.
    """
    _, g, _ = matrices()
    u = torch.einsum("ij,ocjk,lk->ilco", g, weight.detach().double(), g)
    return u.reshape(POINTS, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def convolve(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, of x (N, C_in, H, W) with
    transformed filters u (36, C_in, C_out), plus bias; channels_last out.

    Each chunk of tiles takes five operations (a gather, three matrix
    products, a scatter): every parallel operation
    synchronises the thread pool, which costs most where other processes
    share the cores. The chunks depend on the shapes alone, never on the
    number of threads, so every sum is split the same way whatever the pool.
    """
    n, c, h, w = x.shape
    c_out = u.shape[2]
    th, tw = -(-h // OUT), -(-w // OUT)
    # NHWC, padded to whole blocks: one row and column of zeros before, enough after.
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, OUT * tw + 1 - w, 1, OUT * th + 1 - h))
    # Returned as is, not as a view (autograd forbids the trunk's in-place ReLU
    # on a view made inside a Function); written through its NHWC view.
    result = torch.empty(n, c_out, OUT * th, OUT * tw, dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)
    input_transform, output_transform = block_matrices(x.dtype)

    tiles = max(1, CHUNK_ELEMENTS // c)
    if th * tw <= tiles:  # whole images per chunk
        images, rows = min(n, max(1, tiles // (th * tw))), th
    else:  # bands of block rows of one image
        images, rows = 1, max(1, tiles // tw)
    chunk = images * rows * tw
    # Flat buffers, reused by every chunk: each step takes a contiguous prefix.
    gathered, transformed = x.new_empty(POINTS * chunk * c), x.new_empty(POINTS * chunk * c)
    products = x.new_empty(POINTS * chunk * c_out)
    blocks = x.new_empty(OUT * OUT * chunk * c_out)
    for n0 in range(0, n, images):
        k = min(images, n - n0)
        for r0 in range(0, th, rows):
            rr = min(rows, th - r0)
            t = k * rr * tw
            # Gather, in one copy: input block element (j, l) of every tile in the chunk.
            windows = xp[n0 : n0 + k, OUT * r0 : OUT * (r0 + rr) + 2].unfold(1, IN, OUT).unfold(2, IN, OUT)
            d = gathered[: POINTS * t * c].view(IN, IN, k, rr, tw, c)
            d.copy_(windows.permute(4, 5, 0, 1, 2, 3))
            # V = B^T d B, then the 36 channel products, then Y = A^T M A: one matrix product each.
            v = torch.mm(input_transform, d.view(POINTS, -1), out=transformed[: POINTS * t * c].view(POINTS, -1))
            m = torch.bmm(v.view(POINTS, t, c), u, out=products[: POINTS * t * c_out].view(POINTS, t, c_out))
            y = torch.mm(output_transform, m.view(POINTS, -1), out=blocks[: OUT * OUT * t * c_out].view(OUT * OUT, -1))
            # Scatter, in one operation, into the output blocks.
            y = y.view(OUT, OUT, k, rr, tw, c_out)
            block = out[n0 : n0 + k, OUT * r0 : OUT * (r0 + rr)].view(k, rr, OUT, tw, OUT, c_out)
            block = block.permute(2, 4, 0, 1, 3, 5)
            if bias is None:
                block.copy_(y)
            else:
                torch.add(y, bias, out=block)
    if result.shape[2:] != (h, w):
        # A copy, never a view, even where the crop is contiguous (one image, whole rows).
        result = result[:, :, :h, :w].clone(memory_format=torch.channels_last)
    return result


class FilterTransforms:
    """One layer's transformed filters, for the forward and (on first need) the
    backward, with a copy of the weights they were made from.

    Each use compares the layer's weights with that copy, bit for bit, and
    remakes the filters when they differ: no address, version counter or
    checksum can miss an edit (`.data` edits leave the version counter as it
    was, and a freed address is soon reused). The comparison reads the
    weights and their copy once per call: a few milliseconds per pass.
    """

    def __init__(self) -> None:
        self._source: Optional[torch.Tensor] = None
        self._forward: Optional[torch.Tensor] = None
        self._backward: Optional[torch.Tensor] = None

    # A copy or a pickle starts empty: the filters are remade from the weights
    # on first use rather than carried (up to 36 MiB per layer).
    def __getstate__(self) -> dict:
        return {"filters": "remade on first use"}  # not empty: pickle skips __setstate__ for a falsy state

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def made_from(self, weight: torch.Tensor) -> bool:
        """Whether the filters were made from exactly these weights (bits, dtype, device and shape)."""
        source = self._source
        return (source is not None and source.dtype == weight.dtype and source.device == weight.device
                and source.shape == weight.shape
                and torch.equal(source.view(_BITS[source.dtype]), weight.detach().view(_BITS[weight.dtype])))

    def refresh(self, weight: torch.Tensor) -> None:
        """Forget the filters unless they were made from `weight` as it is now."""
        if not self.made_from(weight):
            self._source = weight.detach().clone(memory_format=torch.contiguous_format)
            self._forward, self._backward = None, None

    def forward(self) -> torch.Tensor:
        if self._forward is None:
            self._forward = filter_transform(self._source)
        return self._forward

    def backward(self) -> torch.Tensor:
        # The input gradient of a 3x3, padding-1 convolution is the same
        # convolution of the output gradient with the filters flipped and
        # their in and out channels swapped.
        if self._backward is None:
            self._backward = filter_transform(self._source.transpose(0, 1).flip(2, 3))
        return self._backward


# Weights are compared as integers of their width, so that NaNs and signed zeros compare by their bits.
_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


class _Convolution(torch.autograd.Function):
    """The convolution (transposed: its input gradient) by Winograd.

    Linear in x, so its gradient is the other one of the pair, itself an
    instance of this Function: gradients of any order follow. The weights
    are saved for backward so that autograd refuses them changed in place
    in between, as it does for torch's convolution; edits it cannot see
    (through `.data`) are followed, as torch's convolution follows them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                transforms: FilterTransforms, transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.transforms, ctx.transposed = transforms, transposed
        return convolve(x, transforms.backward() if transposed else transforms.forward(), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors  # raises if the weights changed in place since the forward
        grad_x = None
        if ctx.needs_input_grad[0]:
            ctx.transforms.refresh(weight)
            grad_x = _Convolution.apply(grad, weight, None, ctx.transforms, not ctx.transposed)
        return grad_x, None, None, None, None


def _hooked(layer: nn.Module) -> bool:
    """Whether calling `layer` would run hooks, its own or every module's, which Winograd would skip."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks)


def _dual(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether any of the tensors carries a forward-mode AD tangent."""
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _in_functorch_transform() -> bool:
    """Whether torch.func (grad, vmap, jacrev, ...) is tracing the call."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def applies(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `layer` on `x` runs by Winograd; everywhere else it runs as `layer(x)`.

    The one place that decides. Winograd runs a wide, frozen 3x3, stride-1,
    padding-1 float32 nn.Conv2d (not a subclass: parametrizations make one)
    on the CPU, whatever its size (oneDNN's direct convolutions of one small
    image split their sums by the thread count; Winograd's never do), and
    steps aside wherever it could not behave as the layer does: under
    torch.compile and autocast, for weights or a bias that want
    a gradient, that are inference tensors or carry forward-mode tangents,
    for an input that carries them, inside torch.func's transforms, and
    wherever a hook would run on the layer's call (its own, or a global
    one: weight_norm, pruning, feature extraction are built on them).
    docs/head.md's table lists what it does differently where it runs.
    """
    if torch.compiler.is_compiling():  # first: nothing after it is traced
        return False
    if type(layer) is not nn.Conv2d or "forward" in vars(layer) or _hooked(layer):
        return False
    weight, bias = layer.weight, layer.bias
    return (
        layer.kernel_size == (3, 3) and layer.stride == (1, 1) and layer.padding == (1, 1)
        and layer.dilation == (1, 1) and layer.groups == 1 and layer.padding_mode == "zeros"
        and bias is not None and layer.in_channels >= MIN_CHANNELS
        and x.device.type == weight.device.type == bias.device.type == "cpu"
        and x.dtype == weight.dtype == bias.dtype == torch.float32
        and not weight.requires_grad and not bias.requires_grad
        and not weight.is_inference() and not bias.is_inference()
        and not torch.is_autocast_enabled("cpu")
        and not _dual(x, weight, bias) and not _in_functorch_transform()
    )


def conv3x3(x: torch.Tensor, layer: nn.Conv2d, transforms: FilterTransforms) -> torch.Tensor:
    """`layer(x)` by Winograd, differentiable in x; `transforms` keeps the layer's filters."""
    transforms.refresh(layer.weight)
    return _Convolution.apply(x, layer.weight, layer.bias, transforms, False)
