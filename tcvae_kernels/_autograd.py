"""Autograd wiring shared by the fused ops (C++ ``tcvae::log_qz`` / ``tcvae::log_qz_groups`` and
Triton ``tcvae_triton::log_qz``).

Each forward op takes ``(z, mu, logvar, *args)`` and returns n values followed by their n saved
logsumexp states (not differentiable): ``(log_qz, log_qz_dims, aux_q, aux_qd)``, or with groups
``(log_qz, log_qz_dims, log_qz_groups, aux_q, aux_qd, aux_qg)``; value k has the shape of its state
without the last axis. The matching backward op takes ``(*grads, z, mu, logvar, *states, *args)``
and returns the three gradients.
"""


def setup_context(ctx, inputs, output):
    z, mu, logvar, *args = inputs
    states = output[len(output) // 2 :]
    ctx.mark_non_differentiable(*states)
    ctx.save_for_backward(z, mu, logvar, *states)
    ctx.args = tuple(args)


def make_backward(backward_op):
    """The autograd formula of a forward op whose gradients ``backward_op`` computes."""

    def backward(ctx, *grads):
        z, mu, logvar, *states = ctx.saved_tensors
        # an output that was not used gets no gradient: zeros of its shape
        grads = [s.new_zeros(s.shape[:-1]) if g is None else g for g, s in zip(grads, states)]
        gz, gmu, glv = backward_op(*grads, z, mu, logvar, *states, *ctx.args)
        return (gz, gmu, glv) + (None,) * len(ctx.args)

    return backward


def no_double_backward(ctx, *grads):
    raise RuntimeError(
        "tcvae: double backward (gradients of gradients) is not supported by the fused kernels; "
        "use backend='torch' for higher-order derivatives"
    )


def setup_nothing(ctx, inputs, output):
    pass
