"""What a diffusion model's UNet predicts, and how x0 is read from it.

Each parameterisation says what the UNet is given for noisy images x_t at a step whose
signal share is abar (``unet_input``), how the clean image x0 follows from the UNet's output
(``x0``), and what the output is trained towards (``target``). All work in the model's space
(images in [-1, 1]) and take ``abar`` shaped to broadcast over the images, (B, 1, 1, 1).
``scheduler_prediction`` is diffusers' name for what the UNet's output is.
"""

from __future__ import annotations

# Karras et al.'s sigma_data: the standard deviation the preconditioning assumes of x0 in
# [-1, 1] (0.5, as theirs for images).
SIGMA_DATA = 0.5


class Epsilon:
    """The noise, as DDPM and the authors' model: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""

    scheduler_prediction = "epsilon"

    def unet_input(self, x_t, abar):
        return x_t

    def x0(self, x_t, out, abar):
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()

    def target(self, x0, noise, x_t, abar):
        return noise

    def as_noisy(self, y, abar):
        """A clean image ``y`` taken as the noisy x_t (dissolving adds no noise): ``y`` itself,
        as the authors feed their model."""
        return y


class Sample(Epsilon):
    """x0 itself."""

    scheduler_prediction = "sample"

    def x0(self, x_t, out, abar):
        return out

    def target(self, x0, noise, x_t, abar):
        return x0


class Velocity(Epsilon):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0; x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""

    scheduler_prediction = "v_prediction"

    def x0(self, x_t, out, abar):
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out

    def target(self, x0, noise, x_t, abar):
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0


class Preconditioned(Epsilon):
    """x0 as Karras et al.'s preconditioning reads it (EDM, 2022): in the coordinates where the
    noise is added rather than mixed in, x = x_t / sqrt(abar) = x0 + sigma n with
    sigma^2 = (1 - abar) / abar, the UNet F is given c_in x and

        x0 = c_skip x + c_out F(c_in x),   c_skip = s^2 / (sigma^2 + s^2),
        c_out = sigma s / sqrt(sigma^2 + s^2),   c_in = 1 / sqrt(sigma^2 + s^2)

    (s = ``SIGMA_DATA``). At a small sigma x0 is mostly the input itself, passed through; the
    larger sigma, the more of it is the UNet's estimate. Given a clean image, though, that
    growing correction adds detail as the noise-predicting model does, more the larger t
    (``bench/RESULTS.md``, "What the UNet predicts"). Its output is x0 once corrected, so the
    scheduler takes it as a sample."""

    scheduler_prediction = "sample"

    @staticmethod
    def sigma2(abar):
        return (1 - abar) / abar

    def unet_input(self, x_t, abar):
        return x_t / abar.sqrt() / (self.sigma2(abar) + SIGMA_DATA**2).sqrt()

    def _skip_out(self, abar):
        total = self.sigma2(abar) + SIGMA_DATA**2
        skip = SIGMA_DATA**2 / total
        out = self.sigma2(abar).sqrt() * SIGMA_DATA / total.sqrt()
        return skip, out

    def x0(self, x_t, out, abar):
        skip, scale = self._skip_out(abar)
        return skip * (x_t / abar.sqrt()) + scale * out

    def target(self, x0, noise, x_t, abar):
        skip, scale = self._skip_out(abar)
        return (x0 - skip * (x_t / abar.sqrt())) / scale

    def as_noisy(self, y, abar):
        """A clean ``y`` as the noisy image in the model's own coordinates, x = y: x_t is
        sqrt(abar) y, the noisy image's mean."""
        return abar.sqrt() * y


# DiffusionConfig.prediction's names.
TARGETS: dict[str, Epsilon] = {
    "epsilon": Epsilon(),
    "sample": Sample(),
    "v": Velocity(),
    "preconditioned": Preconditioned(),
}
