"""Scores (docs/method.md, section 4): how the features of images become one number an image,
higher = more normal.

A score is a :class:`Score`: ``bank`` keeps what it needs of the normal training images'
features, and calling it scores images' features against that. ``SCORES`` maps each score's
name (``ScoreConfig.kind``, ``--score-kind``) to its class; :func:`register_score` adds one.
The features themselves (:func:`dia.scoring.features`: every shift, test-time samples) are
the same for every score.

This module imports torch only inside the scores' methods, so that the command line reads
the names in ``SCORES`` without loading it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from .registry import Registry

if TYPE_CHECKING:
    import torch

    from .config import ScoreConfig
    from .scoring import ShiftedFeatures

__all__ = ["SCORES", "CSIScore", "Score", "get_score", "get_score_class", "register_score"]


class Score:
    """A way to score images from their :class:`~dia.scoring.ShiftedFeatures`, set up with a
    :class:`~dia.config.ScoreConfig` (``config``).

    A new score sets ``name`` (its ``ScoreConfig.kind``), defines :meth:`bank` and
    :meth:`__call__`, and is registered with :func:`register_score`. Its state is saved with a
    detector as tensors: a dict of them by default; another state defines :meth:`state_dict`
    and :meth:`load_state`.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config

    def bank(self, train: ShiftedFeatures) -> Any:
        """What scoring needs of the normal training images' features (K shifts, M images)."""
        raise NotImplementedError

    def __call__(
        self,
        feats: ShiftedFeatures,
        state: Any,
        exclude_self: bool = False,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) scores of the N images of ``feats`` against ``state``; high = normal.

        ``exclude_self``: ``feats`` are those of the bank's own images, each to be scored
        leaving itself out, or with ``groups`` ((N,) integers) its whole group, as the
        detector's threshold is chosen (:func:`dia.scoring.score_terms` says why).
        """
        raise NotImplementedError

    def state_dict(self, state: Any) -> dict[str, torch.Tensor]:
        """The tensors of ``state`` that a saved detector holds, by name."""
        return dict(state)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> Any:
        """The state back from :meth:`state_dict`'s tensors (a KeyError for a missing one)."""
        return dict(tensors)


# Every score by name, the built-in one first.
SCORES: Registry[type[Score]] = Registry("score kind", Score)
register_score = SCORES.register


def get_score_class(kind: str) -> type[Score]:
    """The class of score ``kind`` (a key of ``SCORES``)."""
    return SCORES.lookup(kind)


def get_score(config: ScoreConfig) -> Score:
    """The score ``config.kind`` names, set up with ``config``."""
    return get_score_class(config.kind)(config)


@register_score
class CSIScore(Score):
    """CSI's score and its variants (:func:`dia.scoring.csi_score`), as ``features``,
    ``cosine``, ``shift_weight`` and ``neighbours`` set it; its state is a
    :class:`~dia.scoring.FeatureBank`."""

    name = "csi"

    def bank(self, train: ShiftedFeatures) -> Any:
        from .scoring import build_bank

        return build_bank(train, self.config)

    def __call__(self, feats, state, exclude_self=False, groups=None) -> torch.Tensor:
        from .scoring import csi_score

        return csi_score(feats, state, self.config, exclude_self, groups)

    def state_dict(self, state: Any) -> dict[str, torch.Tensor]:
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> Any:
        from .scoring import FeatureBank

        return FeatureBank(**{f.name: tensors[f.name] for f in dataclasses.fields(FeatureBank)})
