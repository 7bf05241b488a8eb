"""Autograd wiring shared by the fused ops (C++ ``tcvae::log_qz`` and Triton ``tcvae_triton::log_qz``).

Both forward ops take ``(z, mu, logvar, *scalars)`` and return ``(log_qz, log_qz_dims, aux_q, aux_qd)``
where the aux tensors are the kernel's saved logsumexp states (not differentiable); both backward
ops take ``(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, *scalars)`` and return the three gradients.
"""


def setup_context(ctx, inputs, output):
    z, mu, logvar, *scalars = inputs
    _, _, aux_q, aux_qd = output
    ctx.mark_non_differentiable(aux_q, aux_qd)
    ctx.save_for_backward(z, mu, logvar, aux_q, aux_qd)
    ctx.scalars = tuple(scalars)


def make_backward(backward_op):
    """The autograd formula of a forward op whose gradients ``backward_op`` computes."""

    def backward(ctx, grad_q, grad_qd, _grad_aux_q, _grad_aux_qd):
        z, mu, logvar, aux_q, aux_qd = ctx.saved_tensors
        m, d = z.shape
        if grad_q is None:  # only log_qz_dims was used
            grad_q = aux_q.new_zeros((m,))
        if grad_qd is None:  # only log_qz was used
            grad_qd = aux_qd.new_zeros((m, d))
        gz, gmu, glv = backward_op(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, *ctx.scalars)
        return (gz, gmu, glv) + (None,) * len(ctx.scalars)

    return backward


def no_double_backward(ctx, *grads):
    raise RuntimeError(
        "tcvae: double backward (gradients of gradients) is not supported by the fused kernels; "
        "use backend='torch' for higher-order derivatives"
    )


def setup_nothing(ctx, inputs, output):
    pass
