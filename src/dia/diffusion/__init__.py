"""The DDPM used as a dissolving operator: the model and its training loop."""

from .model import DiffusionModel
from .train import train_diffusion

__all__ = ["DiffusionModel", "train_diffusion"]
