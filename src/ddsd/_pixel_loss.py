"""The per-pixel CE and KD terms of :class:`~ddsd.loss.DDSDLoss`, and their weighted sum with a one-pass gradient.

Forward (no autograd graph): ``log p = log_softmax(z)`` (shared by CE, the T = 1 KD term, the difficulty and the
accuracy statistics), ``log q = log_softmax(z / T)`` only when ``T != 1``, ``CE_i = -log p(y_i)`` and
``KL_i = KL(p_t || q)_i`` (closed form for the virtual teacher ``(a, b, ..., b)``:
``sum_k p_t log p_t - (a - b) log q(y_i) - b sum_k log q(k)_i``, so the ``[B, K, H, W]`` teacher never exists).

The loss is ``L = sum_i alpha_i CE_i + beta_i KL_i`` with per-pixel weights fixed after the selection
(``alpha`` = CE mask / count, ``beta = lambda T^2 gamma``, ``gamma = keep / N``). Its gradient is written
directly instead of replaying the autograd graph of log-softmax, gather, class-sum and masks (which
materialises several ``[B, K, H, W]`` tensors):

* virtual teacher: ``dL/dz_k = alpha (p_k - [k = y]) + (beta / T) (q_k - (a - b) [k = y] - b)``
  (using ``sum_k p_t(k) = a + (K - 1) b = 1``);
* network teacher: ``dL/dz_k = alpha (p_k - [k = y]) + (beta / T) (q_k - p_t(k))``.

One ``exp`` and one fused multiply-add over ``[B, K, H, W]`` (two of each when ``T != 1``) plus a scatter over
``[B, H, W]``: cheaper than ``F.cross_entropy``'s own backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BinaryTerms", "PixelTerms", "binary_terms", "binary_weighted_loss", "pixel_terms", "weighted_loss"]


class PixelTerms(NamedTuple):
    """Per-pixel tensors (no gradient): ``log_p`` / ``log_q`` ``[B, K, H, W]`` (``log_q is log_p`` at T = 1;
    None when not kept, see :func:`pixel_terms`), ``lp_y = log p(y)`` (``CE = -lp_y``), ``kl``,
    ``lq_y = log q(y)`` ``[B, H, W]``; ``log_pt`` the network teacher's ``[B, K, H, W]`` log-probabilities at T
    (None for the virtual teacher); ``lse_t = logsumexp_k(z_k / T)`` ``[B, H, W]`` when ``log_q`` is None.

    Integer ``T`` in {2, 3, 4} (virtual teacher, eager, :func:`_virtual_terms_pow`): ``log_p`` is None too; with
    ``u = exp((z - zmax) / T)`` (recomputed where needed), ``zmax = max_k z_k``, ``inv_s1 = 1 / sum_k u^T``,
    ``inv_st = 1 / sum_k u`` and ``lp_max = max_k log p = -log sum_k u^T``, all ``[B, H, W]`` (``p = u^T
    inv_s1``, ``q = u inv_st``)."""

    log_p: Tensor
    log_q: Tensor | None
    lp_y: Tensor
    kl: Tensor
    lq_y: Tensor
    log_pt: Tensor | None
    lse_t: Tensor | None = None
    zmax: Tensor | None = None
    inv_s1: Tensor | None = None
    inv_st: Tensor | None = None
    lp_max: Tensor | None = None


def _per_image(z: Tensor) -> bool:
    """Work one image at a time (eager, batch > 1): a full-size temporary costs its page faults on CPU, a
    per-image one is reused by the allocator (measured on 8 x 11 x 360 x 480: 65 -> 41 ms for the T != 1
    log-softmax, 84 -> 55 ms for the T != 1 backward)."""
    return z.shape[0] > 1 and not torch.compiler.is_compiling()


def _scaled_log_softmax(z: Tensor, t: float) -> Tensor:
    """``log_softmax(z / T)`` over dim 1 of ``[B, K, H, W]``."""
    if not _per_image(z):
        return F.log_softmax(z / t, dim=1)
    out = torch.empty_like(z)
    for i in range(z.shape[0]):
        torch.log_softmax(z[i] / t, 0, out=out[i])
    return out


def _scaled_logsumexp(z: Tensor, t: float) -> Tensor:
    """``logsumexp_k(z_k / T)``: ``[B, H, W]`` from ``[B, K, H, W]``."""
    if not _per_image(z):
        return torch.logsumexp(z / t, dim=1)
    out = z.new_empty((z.shape[0], *z.shape[2:]))
    for i in range(z.shape[0]):
        torch.logsumexp(z[i] / t, 0, out=out[i])
    return out


def _add_q_times(grad: Tensor, z: Tensor, t: float, lse_t: Tensor, w: Tensor) -> Tensor:
    """``grad += softmax(z / T) * w`` in place, ``softmax(z / T) = exp(z / T - lse_t)`` (``w`` ``[B, 1, H, W]``)."""
    if not _per_image(grad):
        return grad.addcmul_((z / t - lse_t.unsqueeze(1)).exp(), w)
    for i in range(grad.shape[0]):
        grad[i].addcmul_(torch.div(z[i], t).sub_(lse_t[i]).exp_(), w[i])
    return grad


def _add_exp_times(grad: Tensor, log_q: Tensor, w: Tensor, value: float = 1.0) -> Tensor:
    """``grad += value * exp(log_q) * w`` in place (``w`` ``[B, 1, H, W]``)."""
    if not _per_image(grad):
        return grad.addcmul_(log_q.exp(), w, value=value)
    for i in range(grad.shape[0]):
        grad[i].addcmul_(log_q[i].exp(), w[i], value=value)
    return grad


@torch.no_grad()
def pixel_terms(
    z: Tensor,
    y0: Tensor,
    t: float,
    virtual: tuple[float, float, float] | None,
    log_pt: Tensor | None,
    keep_log_q: bool = True,
) -> PixelTerms:
    """CE and KL per pixel. ``z``: float32 ``[B, K, H, W]``; ``y0``: ``[B, 1, H, W]`` class ids (any id at
    void pixels); ``virtual``: ``(a, b, sum p_t log p_t)`` or None with ``log_pt`` given. In-place arithmetic
    on fresh tensors keeps the number of ``[B, H, W]`` allocations (page faults on CPU) small.

    Virtual teacher, ``T != 1`` and ``keep_log_q=False``: no ``[B, K, H, W]`` ``log_q`` at all, only
    ``lse_t = logsumexp(z / T)``: ``log q(y) = z_y / T - lse_t``, ``sum_k log q(k) = sum_k z_k / T - K lse_t``
    (the backward recomputes ``q = exp(z / T - lse_t)`` image by image)."""
    z = z.detach()
    if log_pt is None and t in _POW_T and not keep_log_q and _per_image(z):
        return _virtual_terms_pow(z, y0, int(t), virtual)
    log_p = F.log_softmax(z, dim=1)
    lp_y = log_p.gather(1, y0).squeeze(1)
    if log_pt is None and t != 1.0 and not keep_log_q:
        return _virtual_terms_from_lse(z, y0, t, virtual, log_p, lp_y)
    log_q = log_p if t == 1.0 else _scaled_log_softmax(z, t)
    lq_y = lp_y if t == 1.0 else log_q.gather(1, y0).squeeze(1)
    if log_pt is None:
        a, b, neg_entropy = virtual
        if b > 0:  # neg_entropy - (a - b) log q(y) - b sum_k log q(k)
            kl = log_q.sum(1).mul_(-b).add_(lq_y, alpha=-(a - b)).add_(neg_entropy)
        else:
            kl = lq_y.mul(-a).add_(neg_entropy)
    else:
        kl = F.kl_div(log_q, log_pt, log_target=True, reduction="none").sum(1)
    return PixelTerms(log_p, log_q, lp_y, kl, lq_y, log_pt)


def _virtual_terms_from_lse(
    z: Tensor, y0: Tensor, t: float, virtual: tuple[float, float, float], log_p: Tensor, lp_y: Tensor
) -> PixelTerms:
    """:func:`pixel_terms` of the virtual teacher at ``T != 1`` without ``log_q`` (``[B, H, W]`` work only)."""
    a, b, neg_entropy = virtual
    lse_t = _scaled_logsumexp(z, t)
    lq_y = z.gather(1, y0).squeeze(1).div_(t).sub_(lse_t)
    if b > 0:  # neg_entropy - (a - b) log q(y) - b sum_k log q(k)
        kl = z.sum(1).div_(t).sub_(lse_t, alpha=z.shape[1]).mul_(-b).add_(lq_y, alpha=-(a - b)).add_(neg_entropy)
    else:
        kl = lq_y.mul(-a).add_(neg_entropy)
    return PixelTerms(log_p, None, lp_y, kl, lq_y, None, lse_t)


_POW_T = (2.0, 3.0, 4.0)


def _pow_int(u: Tensor, n: int, out: Tensor | None = None) -> Tensor:
    """``u ** n`` for ``n`` in {2, 3, 4} by multiplications (a fresh tensor, or ``out``)."""
    r = torch.mul(u, u, out=out) if out is not None else u * u
    return r.mul_(r) if n == 4 else r.mul_(u) if n == 3 else r


def _exp_scaled(z: Tensor, m: Tensor, t: float, out: Tensor) -> Tensor:
    """``u = exp((z - m) / T)`` into ``out`` (``z`` ``[K, H, W]``, ``m`` ``[H, W]``)."""
    return torch.sub(z, m, out=out).div_(t).exp_()


def _virtual_terms_pow(z: Tensor, y0: Tensor, n: int, virtual: tuple[float, float, float]) -> PixelTerms:
    """:func:`pixel_terms` of the virtual teacher at an integer ``T = n`` in {2, 3, 4} with one ``exp``.

    With ``m = max_k z_k`` and ``u = exp((z - m) / T)``: ``exp(z - m) = u^T`` (multiplications, not a second
    ``exp``), so ``log p = z - m - log S1`` with ``S1 = sum_k u^T`` and ``lse_t = m / T + log St`` with ``St =
    sum_k u``. Image by image in two reused ``[K, H, W]`` temporaries: no ``[B, K, H, W]`` tensor is kept (a
    fresh one costs more in page faults than the backward's recomputation of ``u``). Differs from the
    log-softmax path by float rounding only (a few ulp in ``S1``; ``u^T`` underflows below ``e^-87`` relative
    to the largest term, where ``exp(z - m)`` does too)."""
    a, b, neg_entropy = virtual
    t = float(n)
    m = z.amax(1)  # [B, H, W]
    s1, st = torch.empty_like(m), torch.empty_like(m)
    tmp, tmp_pow = torch.empty_like(z[0]), torch.empty_like(z[0])
    for i in range(z.shape[0]):
        ui = _exp_scaled(z[i], m[i], t, tmp)
        torch.sum(ui, 0, out=st[i])
        torch.sum(_pow_int(ui, n, out=tmp_pow), 0, out=s1[i])
    lp_max = s1.log().neg_()  # max_k log p = -log S1
    z_y = z.gather(1, y0).squeeze(1)
    lp_y = torch.sub(z_y, m).add_(lp_max)
    lse_t = st.log().add_(m, alpha=1.0 / t)
    lq_y = z_y.div_(t).sub_(lse_t)
    if b > 0:  # neg_entropy - (a - b) log q(y) - b sum_k log q(k)
        kl = z.sum(1).div_(t).sub_(lse_t, alpha=z.shape[1]).mul_(-b).add_(lq_y, alpha=-(a - b)).add_(neg_entropy)
    else:
        kl = lq_y.mul(-a).add_(neg_entropy)
    return PixelTerms(None, None, lp_y, kl, lq_y, None, lse_t, m, s1.reciprocal_(), st.reciprocal_(), lp_max)


class _PowWeightedLoss(torch.autograd.Function):
    """The backward of :func:`_virtual_terms_pow`'s terms, image by image with ``u = exp((z - m) / T)``
    recomputed: ``dL/dz = u^T (alpha g / S1) + u (beta g / (T St)) - (beta g / T) b - [k = y] (alpha g +
    (beta g / T) (a - b))``, written into the gradient's own memory."""

    @staticmethod
    def forward(ctx, z, value, m, inv_s1, inv_st, y0, alpha, gamma, lam, n, a_minus_b, b):
        ctx.save_for_backward(z.detach(), m, inv_s1, inv_st, y0, alpha, gamma)
        ctx.consts = (lam, n, a_minus_b, b)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, m, inv_s1, inv_st, y0, alpha, gamma = ctx.saved_tensors
        lam, n, a_minus_b, b = ctx.consts
        gamma = alpha if gamma is None else gamma
        ga, gb = alpha * g, gamma * (g * (lam / n))  # [B, H, W]
        w_p, w_q = ga.mul(inv_s1), gb.mul(inv_st)
        grad, tmp = torch.empty_like(z), torch.empty_like(z[0])
        for i in range(z.shape[0]):
            ui = _exp_scaled(z[i], m[i], float(n), tmp)
            gi = _pow_int(ui, n, out=grad[i]).mul_(w_p[i]).addcmul_(ui, w_q[i])
            if b > 0:
                gi.sub_(gb[i], alpha=b)
        grad.scatter_add_(1, y0, gb.mul_(a_minus_b).add_(ga).neg_().unsqueeze(1))
        return grad, None, None, None, None, None, None, None, None, None, None, None


class _WeightedLoss(torch.autograd.Function):
    """Returns the precomputed value; the backward writes ``dL/dz`` from the saved log-probabilities."""

    @staticmethod
    def forward(ctx, z, value, log_p, log_q, log_pt, lse_t, y0, alpha, gamma, lam, t, a_minus_b, b):
        ctx.save_for_backward(log_p, log_q, log_pt, y0, alpha, gamma, lse_t, z if lse_t is not None else None)
        ctx.consts = (lam, t, a_minus_b, b)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        log_p, log_q, log_pt, y0, alpha, gamma, lse_t, z = ctx.saved_tensors
        lam, t, a_minus_b, b = ctx.consts
        c = g * (lam / t)  # KD coefficient scale (0-d)
        virtual_t1 = t == 1.0 and log_pt is None
        if gamma is None and virtual_t1:
            # KD weights = CE weights: grad = alpha (p (g + c) - c b) - [k = y] alpha (g + c (a - b))
            grad = log_p.exp().mul_(g + c)
            if b > 0:
                grad.sub_(c * b)
            grad.mul_(alpha.unsqueeze(1))
            at_y = alpha * (g + c * a_minus_b)
        else:
            gamma = alpha if gamma is None else gamma
            # in place on the one [B, K, H, W] allocation (exp): a second full-size result costs its page faults;
            # at most two [B, H, W] temporaries live at a time (peak memory)
            if t == 1.0:
                grad = log_p.exp().mul_(torch.mul(alpha, g).addcmul_(gamma, c).unsqueeze(1))
                ga, gb = alpha * g, gamma * c
            else:
                ga, gb = alpha * g, gamma * c
                grad = log_p.exp().mul_(ga.unsqueeze(1))
                if log_q is None:  # virtual teacher at T != 1 without a stored log q: q from z and lse_t
                    _add_q_times(grad, z.detach(), t, lse_t, gb.unsqueeze(1))
                else:
                    _add_exp_times(grad, log_q, gb.unsqueeze(1))
            if log_pt is not None:
                _add_exp_times(grad, log_pt, gb.unsqueeze(1), value=-1.0)
                at_y = ga
            else:
                if b > 0:
                    grad.sub_(gb.unsqueeze(1), alpha=b)
                at_y = ga.add_(gb, alpha=a_minus_b)
        at_y = at_y.unsqueeze(1)
        grad.scatter_add_(1, y0, at_y.neg_())
        return grad, None, None, None, None, None, None, None, None, None, None, None, None


def weighted_loss(
    z: Tensor,
    value: Tensor,
    terms: PixelTerms,
    y0: Tensor,
    alpha: Tensor,
    gamma: Tensor | None,
    lam: float,
    t: float,
    virtual: tuple[float, float, float] | None,
) -> Tensor:
    """``value`` (the caller's ``sum_i alpha_i CE_i + lam * gamma_i KL_i``, 0-d) with the gradient above flowing
    to ``z``. ``alpha`` / ``gamma``: ``[B, H, W]`` CE and (unscaled) KD weights, 0 where a pixel does not count
    (``gamma=None``: the same as ``alpha``); ``beta = lam * gamma`` with ``lam = lambda T^2``."""
    if not z.requires_grad:
        return value
    a_minus_b, b = (0.0, 0.0) if virtual is None else (virtual[0] - virtual[1], virtual[1])
    if terms.zmax is not None:
        return _PowWeightedLoss.apply(
            z, value, terms.zmax, terms.inv_s1, terms.inv_st, y0, alpha, gamma, lam, int(t), a_minus_b, b
        )
    log_q = None if t == 1.0 else terms.log_q  # the same tensor twice would break torch.compile's tracing
    return _WeightedLoss.apply(
        z, value, terms.log_p, log_q, terms.log_pt, terms.lse_t, y0, alpha, gamma, lam, t, a_minus_b, b
    )


# -- K = 2, virtual teacher: everything is a function of the signed margin m = z_y - z_other per pixel ----------


class BinaryTerms(NamedTuple):
    """Per-pixel ``[B, H, W]`` tensors of the binary fast path (no gradient): ``is_one`` (bool, target == 1),
    ``sign`` (+1 where the class id is 1, else -1), ``m = sign (z_1 - z_0)`` the target-class margin,
    ``lp_y = log p(y) = log sigmoid(m)``, ``lq_y = log q(y) = log sigmoid(m / T)`` (the same tensor at T = 1)
    and the virtual-teacher ``kl``."""

    is_one: Tensor
    sign: Tensor
    m: Tensor
    lp_y: Tensor
    lq_y: Tensor
    kl: Tensor


@torch.no_grad()
def binary_terms(z: Tensor, target: Tensor, t: float, virtual: tuple[float, float, float]) -> BinaryTerms:
    """:func:`pixel_terms` for ``K = 2`` and the virtual teacher ``(a, b = 1 - a)``, on ``[B, H, W]`` only.

    With ``u = m / T``: ``log q(other) = log q(y) - u``, so ``sum_k log q(k) = 2 log q(y) - u`` and the closed
    form ``sum p_t log p_t - (a - b) log q(y) - b sum_k log q(k)`` becomes ``sum p_t log p_t - log q(y) + b u``
    (``a + b = 1``). ``z``: float32 ``[B, 2, H, W]``; ``target``: ``[B, H, W]`` class ids (void pixels count as
    class 0 here: their weights are 0)."""
    z = z.detach()
    is_one = target == 1
    sign = is_one.to(z.dtype).mul_(2.0).sub_(1.0)
    m = torch.sub(z[:, 1], z[:, 0]).mul_(sign)
    lp_y = F.logsigmoid(m)
    u = torch.div(m, t)
    lq_y = lp_y if t == 1.0 else F.logsigmoid(u)
    _, b, neg_entropy = virtual
    kl = u.mul_(b).sub_(lq_y).add_(neg_entropy)  # in place on u: one fresh [B, H, W] allocation less
    return BinaryTerms(is_one, sign, m, lp_y, lq_y, kl)


class _BinaryWeightedLoss(torch.autograd.Function):
    """Returns the precomputed value; the backward writes ``+-dL/dz_y`` on the two channels.

    ``dL/dz_y = alpha (p_y - 1) + (beta / T) (q_y - a)`` with ``p_y = sigmoid(m)``, ``q_y = sigmoid(m / T)``,
    and ``dL/dz_other = -dL/dz_y`` (both gradients of the general case sum to 0 over the classes)."""

    @staticmethod
    def forward(ctx, z, value, sign, m, alpha, gamma, lam, t, a):
        ctx.save_for_backward(sign, m, alpha, gamma)
        ctx.consts = (lam, t, a)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        sign, m, alpha, gamma = ctx.saved_tensors
        lam, t, a = ctx.consts
        c = g * (lam / t)
        gamma = alpha if gamma is None else gamma
        if torch.compiler.is_compiling():  # out= into a channel slice does not trace; the compiler fuses anyway
            g_1 = (torch.sigmoid(-m) * alpha * -g + (torch.sigmoid(m / t) - a) * gamma * c) * sign
            return torch.stack([-g_1, g_1], 1), None, None, None, None, None, None, None, None
        # written into the output's channels (out=, in place): every fresh [B, H, W] tensor costs its page faults
        grad = torch.empty((m.shape[0], 2, *m.shape[1:]), dtype=m.dtype, device=m.device)
        g_1 = torch.neg(m, out=grad[:, 1]).sigmoid_().mul_(alpha).mul_(-g)  # alpha (p_y - 1) g
        q = torch.mul(m, 1.0 / t, out=grad[:, 0]).sigmoid_()  # channel 0 as scratch space until the last line
        g_1.add_(q.sub_(a).mul_(gamma).mul_(c)).mul_(sign)  # dL/dz_y times sign: the gradient on z_1
        torch.neg(g_1, out=grad[:, 0])
        return grad, None, None, None, None, None, None, None, None


def binary_weighted_loss(
    z: Tensor, value: Tensor, terms: BinaryTerms, alpha: Tensor, gamma: Tensor | None, lam: float, t: float, a: float
) -> Tensor:
    """:func:`weighted_loss` of the binary fast path (``a`` the virtual teacher's confidence)."""
    if not z.requires_grad:
        return value
    return _BinaryWeightedLoss.apply(z, value, terms.sign, terms.m, alpha, gamma, lam, t, a)
