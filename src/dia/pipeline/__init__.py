"""What the commands do, as functions the Python API calls too; the command line
(:mod:`dia.cli`) parses their arguments and prints their results.

Each module has one job, and imports only those listed before it:

- :mod:`~dia.pipeline.folders`: the run folder, its ``config.json`` and what must not be
  overwritten in it;
- :mod:`~dia.pipeline.steps`: the data, the diffusion model and the detector, each trained
  or loaded on its own;
- :mod:`~dia.pipeline.pictures`: the training curves, maps, grids and ``report.html``;
- :mod:`~dia.pipeline.predict`: new image files scored (``dia score``);
- :mod:`~dia.pipeline.assess`: a test split scored into ``metrics.json`` (``dia evaluate``,
  ``dia maps``);
- :mod:`~dia.pipeline.runner`: the commands that train (``dia run``, ``resume``, ``train``,
  ``train-diffusion``, ``dissolve``).
"""

from .assess import (
    QUALITY_IMAGES,
    QUALITY_TIMESTEPS,
    dissolve_grid_step,
    draw_anomaly_maps,
    evaluate,
    evaluate_external,
    evaluate_saved,
    evaluate_step,
    evaluation_config,
    external_data_config,
    finish_run,
    reference_metrics,
    saved_test_scores,
)
from .folders import (
    CHECKPOINT_DIR,
    DETECTOR_DIR,
    DIFFUSION_CHECKPOINT_DIR,
    DIFFUSION_DIR,
    EXTERNAL_DIR,
    REPORT_NAME,
    TIMINGS_NAME,
    agreed_run_dir,
    checkpoint_folder,
    default_run_dir,
    detector_digest,
    diffusion_settings_differ,
    has_model,
    holds_detector,
    in_the_way,
    interrupted_run,
    is_run_folder,
    load_config,
    model_in_the_way,
    read_config,
    run_folder_of,
    save_config,
)
from .pictures import (
    refresh_report,
    write_anomaly_maps,
    write_dissolve_grid,
    write_report,
    write_training_curve,
)
from .predict import score_files, score_paths
from .runner import (
    dissolve_config,
    draw_dissolve_grid,
    resume,
    run,
    train,
    train_diffusion_only,
)
from .steps import (
    checkpointing,
    fit_dissolver_step,
    held_out_normals,
    load_detector,
    load_dissolver,
    load_run_data,
    make_detector,
    make_dissolver,
    train_detector_step,
)

__all__ = [
    "CHECKPOINT_DIR",
    "DETECTOR_DIR",
    "DIFFUSION_CHECKPOINT_DIR",
    "DIFFUSION_DIR",
    "EXTERNAL_DIR",
    "QUALITY_IMAGES",
    "QUALITY_TIMESTEPS",
    "REPORT_NAME",
    "TIMINGS_NAME",
    "agreed_run_dir",
    "checkpoint_folder",
    "checkpointing",
    "default_run_dir",
    "detector_digest",
    "diffusion_settings_differ",
    "dissolve_config",
    "dissolve_grid_step",
    "draw_anomaly_maps",
    "draw_dissolve_grid",
    "evaluate",
    "evaluate_external",
    "evaluate_saved",
    "evaluate_step",
    "evaluation_config",
    "external_data_config",
    "finish_run",
    "has_model",
    "held_out_normals",
    "holds_detector",
    "in_the_way",
    "interrupted_run",
    "is_run_folder",
    "load_config",
    "load_detector",
    "load_dissolver",
    "load_run_data",
    "make_detector",
    "make_dissolver",
    "model_in_the_way",
    "read_config",
    "reference_metrics",
    "refresh_report",
    "resume",
    "run",
    "run_folder_of",
    "save_config",
    "saved_test_scores",
    "score_files",
    "score_paths",
    "train",
    "train_detector_step",
    "train_diffusion_only",
    "fit_dissolver_step",
    "write_anomaly_maps",
    "write_dissolve_grid",
    "write_report",
    "write_training_curve",
]
