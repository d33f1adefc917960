"""The detector as an estimator: ``fit`` on normal images, then score, decide, save, load."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from . import distributed
from .checkpoint import Checkpointing
from .config import (
    DetectorConfig,
    DiffusionConfig,
    ScoreConfig,
    check_shift_count,
    replace_settings,
    to_dict,
)
from .config_tree import flat_paths, get_path
from .detector_format import (
    FORMAT,
    FORMAT_VERSION,
    OLD_VERSION_KEY,
    VERSIONS,
    check_saved_config,
)
from .device import resolve_device, resolve_precision
from .diffusion import DiffusionModel
from .dissolve import (
    DiffusionDissolver,
    Dissolver,
    IdentityDissolver,
    dissolver_class,
    median_dissolve,
)
from .inputs import as_images, group_numbers
from .maps import occlusion_map
from .saved import CONFIG_NAME, load_component, save_component
from .scores import Score, get_score
from .scoring import ShiftedFeatures, estimate_seconds, features, plain_features
from .training import BUDGET_SPENT, DetectorTrainer, build_network

# The estimate of the feature bank's time is noisy: with one timed batch the real bank took
# 0.69 to 1.15 times its estimate in the 30-minute runs (bench/results/pneumoniamnist-1800s.json
# and covid-ct.json, timings_s), and another process running during that one timing once made
# it twice too long. It is now the median of three timings; a margin is kept on top of it.
BANK_SAFETY = 1.35
# Anomaly maps dissolve patches with the median blur at its strongest (kernel 7): it needs no
# diffusion model (none is saved with a detector) and, unlike a Gaussian blur, it removes a spot
# smaller than half its window entirely while keeping larger edges in place, so a patched copy
# differs from the image mostly in that fine detail.
MAP_TIMESTEP = 100


# The constructor arguments that are settings dataclasses: their fields are parameters too, as
# ``detector__width`` (get_params, set_params).
CONFIGS = ("detector", "score", "diffusion")


class DIADetector(BaseEstimator):
    """DIA anomaly detector with the scikit-learn/PyOD contract.

    ``fit(X)`` trains on normal images only: the diffusion model when dissolving needs one and
    none is given, the amplifying network, the feature bank, and a decision threshold that lets
    through ``1 - fpr`` of the normal training images (scored leave-one-out). Afterwards
    ``score_samples`` (higher = more normal), ``decision_function`` (negative = abnormal) and
    ``predict`` (1 = abnormal, 0 = normal).

    The constructor's arguments are its hyper-parameters, stored as given (None for a config:
    its defaults); what fitting learns ends in ``_``. ``get_params`` and ``set_params`` read and
    change them, also one setting of a config at a time (``detector__width``), so that
    ``sklearn.base.clone`` gives an unfitted copy.

    ``dicom_window`` (centre, width) is saved with the detector so that DICOM files to be scored
    later are read as its training files were (:func:`dia.data.folder.load_images`, ``dia
    score``); fit and score take images, not files, and do not use it.
    """

    def __init__(
        self,
        detector: DetectorConfig | None = None,
        score: ScoreConfig | None = None,
        diffusion: DiffusionConfig | None = None,
        fpr: float = 0.05,
        device: str = "auto",
        precision: str = "auto",
        seed: int = 0,
        progress: bool = True,
        dicom_window: tuple[float, float] | None = None,
    ) -> None:
        self.detector = detector
        self.score = score
        self.diffusion = diffusion
        self.fpr = fpr
        self.device = device
        self.precision = precision
        self.seed = seed
        self.progress = progress
        self.dicom_window = dicom_window

    # -- settings ---------------------------------------------------------------------------
    @property
    def detector_config(self) -> DetectorConfig:
        return self.detector or DetectorConfig()

    @property
    def score_config(self) -> ScoreConfig:
        return self.score or ScoreConfig()

    @property
    def diffusion_config(self) -> DiffusionConfig:
        return self.diffusion or DiffusionConfig()

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments by name; with ``deep``, also every setting of the
        detector, score and diffusion configs as ``section__field`` (their defaults where the
        argument is None)."""
        params = super().get_params(deep=False)
        if deep:
            for section in CONFIGS:
                config = getattr(self, f"{section}_config")
                for name, path in flat_paths(type(config)).items():
                    params[f"{section}__{name}"] = get_path(config, path)
        return params

    def set_params(self, **params) -> DIADetector:
        """Set constructor arguments by name, and single settings of the configs as
        ``section__field`` (``detector__width=8``: a copy of the detector config with that
        setting); returns self. A name that is neither is a ValueError that names it, and
        then nothing is set."""
        own = super().get_params(deep=False)
        deep = self.get_params(deep=True)
        for key, value in params.items():
            if key not in deep:
                raise ValueError(
                    f"{key}={value!r}; expected a parameter of DIADetector: one of "
                    f"{sorted(own)}, or a setting of {', '.join(CONFIGS)} as section__field "
                    "(detector__width)"
                )
        for key, value in params.items():  # whole configs first, then single settings
            if key in own:
                setattr(self, key, value)
        settings: dict[str, dict] = {}
        for key, value in params.items():
            if key not in own:
                section, name = key.split("__", 1)
                settings.setdefault(section, {})[name] = value
        for section, values in settings.items():  # a config's settings together: one check
            config = getattr(self, f"{section}_config")
            setattr(self, section, replace_settings(config, **values))
        return self

    def _scorer(self) -> Score:
        """The score ``score_config.kind`` names (:data:`dia.scores.SCORES`)."""
        return get_score(self.score_config)

    def _runtime(self) -> tuple[torch.device, str]:
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        X,
        y=None,
        groups=None,
        *,
        diffusion_model: DiffusionModel | None = None,
        callback=None,
        callback_every_s: float | None = None,
        deadline: float | None = None,
        keep_features: bool = False,
        checkpoint: Checkpointing | None = None,
        dissolver: Dissolver | None = None,
    ) -> DIADetector:
        """Train on normal images X; returns self. See :func:`~dia.inputs.as_images` for
        accepted X. ``y`` is ignored, as by PyOD's unsupervised detectors: every image of X is
        taken as normal, labelled or not.

        ``dissolver`` (a :class:`~dia.dissolve.Dissolver` of the kind ``dissolve`` names,
        fitted or not: one that learns is fitted on X first) dissolves the third views; by
        default the settings' own is made and fitted here. ``diffusion_model``: a trained DDPM
        for the diffusion dissolver, the same as ``dissolver=DiffusionDissolver(model)``.

        ``groups`` ((N,) labels, optional: integers or strings) names the file, volume, study
        or patient each image came from. The decision threshold is chosen on the training
        images' scores, each image scored against the images of other groups only: the slices
        of one volume are near copies of each other, and scored against their neighbours they
        would look more normal than a new scan, so that new normal scans would be called
        abnormal more often than ``fpr`` says. None: every image its own group.

        ``deadline`` (a ``time.perf_counter()`` value) is when fitting must be done: detector
        training stops early enough for the feature bank to be built by then.
        ``keep_features`` keeps the training images' features (every shift, projection and
        encoder, before normalising) as ``train_features_``, for comparing score settings
        without running the network again; they are not saved with the model.
        ``checkpoint`` (:class:`~dia.checkpoint.Checkpointing`) saves the detector's training
        as it goes and on Ctrl-C, or continues a saved one (pass the same ``diffusion_model``:
        one trained here again for a limited time would dissolve differently); see
        :meth:`~dia.training.DetectorTrainer.train`.
        """
        if isinstance(y, DiffusionModel):  # fit(X, model) before y was the second argument
            raise TypeError("fit(X, y): pass the diffusion model by name, diffusion_model=...")
        self._check_settings()
        images = as_images(X)
        groups = group_numbers(groups, len(images))
        device, precision = self._runtime()
        self.timings_ = {}
        dissolver = self._fit_dissolver(images, dissolver, diffusion_model, device)
        t0 = time.perf_counter()
        trainer = DetectorTrainer(
            self.detector_config,
            images,
            dissolver=dissolver,
            device=device,
            precision=precision,
            seed=self.seed,
        )
        train_deadline = None if deadline is None else self._train_deadline(images, deadline)
        self.net_, self.history_ = trainer.train(
            self.progress, callback, callback_every_s, train_deadline, checkpoint
        )
        epochs, steps = self.history_.get("epochs", 1.0), self.history_.get("steps")
        if deadline is not None and epochs < 1:
            warnings.warn(
                f"the detector trained for {steps} step{'' if steps == 1 else 's'} ({epochs:.2f} "
                "of an epoch) in the time budget: too little to learn what normal images look "
                "like, so its scores mean little; give a larger budget (--budget)",
                stacklevel=2,
            )
        self.timings_["detector_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = self._fit_bank(images, groups)
        self.timings_["bank_s"] = time.perf_counter() - t0
        if keep_features:
            self.train_features_ = feats
        elif hasattr(self, "train_features_"):
            del self.train_features_  # from an earlier fit: not these images' features
        return self

    def _check_settings(self) -> None:
        """Refuse settings that cannot work, before anything is trained: each config checked
        its own as it was built; what is left is the threshold and what needs them both."""
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr={self.fpr}; expected a fraction in (0, 1)")
        check_shift_count(self.detector_config, self.score_config)

    def _fit_dissolver(self, images, dissolver, diffusion_model, device):
        """The dissolver of training (None for plain CSI): ``dissolver`` as given (or a
        diffusion one with ``diffusion_model``), else the one the settings name; one that
        learns and is not fitted yet is fitted here on ``images`` (its time in
        ``timings_["dissolver_fit_s"]``, what the fitting did in ``dissolver_history_``)."""
        name = self.detector_config.dissolving.dissolve
        if dissolver is None and diffusion_model is not None:
            dissolver = DiffusionDissolver(diffusion_model)
        if dissolver is None:
            dissolver = dissolver_class(name).create(self.diffusion_config)
        elif dissolver.name != name:
            raise ValueError(
                f"a {dissolver.name!r} dissolver was given, but the settings say dissolve={name!r}"
            )
        if not dissolver.fitted:
            t0 = time.perf_counter()
            self.dissolver_history_ = dissolver.fit(
                images, device=device, seed=self.seed, progress=self.progress
            )
            self.timings_["dissolver_fit_s"] = time.perf_counter() - t0
        self.dissolver_ = dissolver
        return None if isinstance(dissolver, IdentityDissolver) else dissolver.to(device)

    def _train_deadline(self, images: torch.Tensor, deadline: float) -> float:
        """When detector training must end for the feature bank to be built by ``deadline``:
        the bank's time is measured first (``timings_["bank_estimate_s"]``), and a budget that
        leaves no time to train is refused."""
        cfg, (device, precision) = self.detector_config, self._runtime()
        if distributed.broadcast_object(deadline <= time.perf_counter()):  # rank 0 decides
            raise ValueError(BUDGET_SPENT)
        probe = build_network(cfg, images.shape[1], images.shape[-1]).to(device)
        bank_s = estimate_seconds(probe, images, cfg, self.score_config, device, precision)
        self.timings_["bank_estimate_s"] = bank_s
        left = deadline - time.perf_counter()
        if distributed.broadcast_object(left <= BANK_SAFETY * bank_s):  # rank 0 decides
            raise ValueError(
                f"the time budget leaves no time to train the detector: {max(left, 0):.0f} s "
                f"are left, and the feature bank of the {len(images)} training images needs "
                f"about {BANK_SAFETY * bank_s:.0f} s; give a larger budget (--budget)"
            )
        return deadline - BANK_SAFETY * bank_s

    def _fit_bank(self, images: torch.Tensor, groups: torch.Tensor | None) -> ShiftedFeatures:
        device, precision = self._runtime()
        feats = features(
            self.net_, images, self.detector_config, self.score_config, device, precision
        )
        scorer = self._scorer()
        self.bank_ = scorer.bank(feats)
        self.channels_, self.image_size_ = int(images.shape[1]), int(images.shape[-1])
        train_scores = scorer(feats, self.bank_, exclude_self=True, groups=groups).numpy()
        self.train_scores_ = train_scores
        self.threshold_ = self.threshold_at(self.fpr)
        return feats

    def threshold_at(self, fpr: float) -> float:
        """The score below which images are called abnormal so that a share ``fpr`` of the
        normal training images (each scored against the others) would be: the threshold for
        another operating point than the detector's own ``fpr``."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr={fpr}; expected a fraction in (0, 1)")
        if getattr(self, "train_scores_", None) is None:
            self._check_fitted()
            raise ValueError(
                "this detector was saved without its training scores (by an earlier dia), so "
                f"only its own threshold, at fpr={self.fpr}, is known; train it again to choose "
                "another"
            )
        return float(np.quantile(self.train_scores_, fpr))

    # -- scoring ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise RuntimeError("this DIADetector is not fitted; call fit() or from_pretrained()")

    def score_samples(self, X) -> np.ndarray:
        """Normality score of each image, (N,); higher = more normal (the score
        ``score_config.kind`` names: CSI's by default)."""
        self._check_fitted()
        images = as_images(X, self.channels_, self.image_size_)
        device, precision = self._runtime()
        feats = features(
            self.net_, images, self.detector_config, self.score_config, device, precision
        )
        return self._scorer()(feats, self.bank_).numpy()

    def anomaly_map(self, X, patch: int | None = None, stride: int | None = None) -> np.ndarray:
        """Where each image looks abnormal: (N, H, W) float32, positive = abnormal detail.

        Every ``patch`` x ``patch`` square, ``stride`` pixels apart (default an eighth of the
        image side and half the patch), is in turn dissolved (median blur, kernel 7) and the
        image scored again; a pixel's value is the mean score gain of the patches covering it.
        A positive value means that dissolving the fine detail there makes the image look more
        normal. The score is this detector's, but from one un-augmented view per shift, the same
        for an image and all its patched copies (:func:`~dia.scoring.plain_features`), so the
        values are free of augmentation noise and differ in scale from :meth:`score_samples`.
        """
        self._check_fitted()
        images = as_images(X, self.channels_, self.image_size_)
        device, precision = self._runtime()
        cfg, score, scorer = self.detector_config, self.score_config, self._scorer()

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            feats = plain_features(self.net_, batch, cfg, score, device, precision)
            return scorer(feats, self.bank_)

        dissolved = median_dissolve(images, MAP_TIMESTEP)
        maps = occlusion_map(score_fn, images, dissolved, patch, stride, score.batch_size)
        return maps.numpy().astype(np.float32)

    def decision_function(self, X) -> np.ndarray:
        """score_samples minus the threshold, (N,): negative means abnormal."""
        return self.score_samples(X) - self.threshold_

    def predict(self, X) -> np.ndarray:
        """1 for images judged abnormal, 0 for normal, (N,)."""
        return (self.decision_function(X) < 0).astype(np.int64)

    # -- persistence ------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (network + bank) into folder ``path``
        (:func:`~dia.saved.save_component`)."""
        self._check_fitted()
        tensors = {f"net.{k}": v for k, v in self.net_.state_dict().items()}
        for name, tensor in self._scorer().state_dict(self.bank_).items():
            tensors[f"bank.{name}"] = tensor
        if getattr(self, "train_scores_", None) is not None:
            # kept so that a loaded detector can set its threshold at another fpr
            tensors["train_scores"] = torch.as_tensor(np.asarray(self.train_scores_))
        config = {
            "detector": to_dict(self.detector_config),
            "score": to_dict(self.score_config),
            "channels": self.channels_,
            "image_size": self.image_size_,
            "fpr": self.fpr,
            "threshold": self.threshold_,
            "seed": self.seed,
            "dicom_window": None if self.dicom_window is None else list(self.dicom_window),
        }
        return save_component(path, FORMAT, FORMAT_VERSION, config, tensors)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "auto", precision: str = "auto"
    ) -> DIADetector:
        """Load a detector saved by :meth:`save_pretrained` (or by an earlier dia); no pickle is
        involved. Its ``config.json`` is checked (:func:`~dia.saved.load_component`, then
        :func:`~dia.detector_format.check_saved_config`): a damaged or edited one is an error
        that names the file and the setting."""
        saved = load_component(path, FORMAT, VERSIONS, old_version_key=OLD_VERSION_KEY)
        path, tensors = saved.folder, saved.tensors
        config = check_saved_config(saved.config, saved.version, path / CONFIG_NAME)
        det = cls(
            detector=config["detector"],
            score=config["score"],
            fpr=config["fpr"],
            device=device,
            precision=precision,
            seed=config["seed"],
            progress=False,
            dicom_window=config["dicom_window"],
        )
        net = build_network(det.detector_config, config["channels"], config["image_size"])
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state)
            bank = {k[5:]: v for k, v in tensors.items() if k.startswith("bank.")}
            det.bank_ = det._scorer().load_state(bank)
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{path} holds weights that do not match its config: {err}") from err
        det.net_ = net.to(resolve_device(device)).eval()
        det.channels_, det.image_size_ = config["channels"], config["image_size"]
        det.threshold_ = config["threshold"]
        if "train_scores" in tensors:
            det.train_scores_ = tensors["train_scores"].numpy()
        return det
