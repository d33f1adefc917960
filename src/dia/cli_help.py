"""The help texts of the command line's setting flags that say more than the setting's name
(:mod:`dia.cli_args` builds the flags), and their value names where the type's would mislead."""

METAVARS = {("data", "dicom_window"): "CENTRE,WIDTH"}
DICOM_WINDOW_HELP = (
    "show every grayscale DICOM or NIfTI file through this window, in its units after "
    "rescaling (CT: Hounsfield units, e.g. --dicom-window=-600,1500 for lung; write it with "
    "'=', or a negative centre reads as an option) instead of the file's own (default: a "
    "DICOM file's own window, a NIfTI volume's 0.5-99.5 percentile range)"
)
HELP = {
    ("data", "spec"): "data spec: 'synthetic' (default), a MedMNIST .npz file, "
    "'medmnist:NAME', a folder of images or a CSV list of image files (path,label[,split])",
    ("detector", "shift"): "shifting transformation: %(choices)s (default rotation)",
    ("score", "kind"): "how features become scores: %(choices)s (default csi: CSI's score and "
    "its variants, which the other --score-* flags set)",
    ("detector", "input_norm"): "network input: fixed ([0, 1] to [-1, 1]) or image "
    "(each image standardised on its own)",
    ("detector", "mask"): "contrastive mask: shifted_removed or none",
    ("detector", "contrastive_per"): "the contrastive loss averaged per anchor (the two views "
    "of each image) or per view (the dissolved ones too, as the authors' DIA)",
    ("detector", "warmup_peak"): "the learning rate at the end of the warm-up, in multiples of "
    "--lr (1: from 0 to it; CSI's 10: from it to 10 times it)",
    ("data", "val_fraction"): "hold out this fraction of the normal training files and of the "
    "abnormal ones (a folder's train/1_abnormal, a CSV list's abnormal train rows) as a "
    "validation split, for data without one; whole files, so a volume's slices stay "
    "together (default 0: none)",
    ("data", "dicom_window"): DICOM_WINDOW_HELP,
    ("diffusion", "noise_draws"): "how the diffusion model dissolves: 0 takes the clean image "
    "as the noisy one at step t; K noises it to step t K times and averages the K estimates "
    "(removes more, the larger t; default 0)",
    ("data", "dicom_studies"): "keep the DICOM files of one study (StudyInstanceUID) together "
    "in splits and thresholds (default true); false splits them file by file, for data whose "
    "anonymiser gave every file one study",
}
