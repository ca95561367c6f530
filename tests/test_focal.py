"""Focal loss: analytic gradient and hessian against finite differences; γ=0, α=½ is half the log loss."""
import numpy as np
import pytest

from remedi_spark.models.gbdt.focal import focal_grad_hess, focal_loss


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 0.5), (0.1, 3.0)])
@pytest.mark.parametrize("y", [0.0, 1.0])
def test_gradient_and_hessian_match_finite_differences(alpha, gamma, y):
    z = np.linspace(-6, 6, 49)
    labels = np.full_like(z, y)
    h = 1e-5
    grad, hess = focal_grad_hess(z, labels, alpha, gamma)
    num_grad = (focal_loss(z + h, labels, alpha, gamma) - focal_loss(z - h, labels, alpha, gamma)) / (2 * h)
    g_plus, _ = focal_grad_hess(z + h, labels, alpha, gamma)
    g_minus, _ = focal_grad_hess(z - h, labels, alpha, gamma)
    np.testing.assert_allclose(grad, num_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(hess, (g_plus - g_minus) / (2 * h), rtol=1e-4, atol=1e-7)


def test_reduces_to_half_log_loss():
    z = np.array([-2.0, 0.0, 3.0])
    p = 1 / (1 + np.exp(-z))
    for y in (0.0, 1.0):
        grad, hess = focal_grad_hess(z, np.full(3, y), alpha=0.5, gamma=0.0)
        np.testing.assert_allclose(grad, 0.5 * (p - y))
        np.testing.assert_allclose(hess, 0.5 * p * (1 - p))
