from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # Test models are tiny and gain nothing from threads, and on a busy shared CPU OpenMP
    # spin-waiting made them about 100x slower with 2 threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int | None = None,
    **elements: object,
) -> Path:
    """Write ``pixels`` as a Part 10 DICOM file; ``elements`` are extra data elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    set_pixel_data(ds, pixels, photometric, bits or 8 * pixels.dtype.itemsize)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def write_dicom():
    """Writes a DICOM file: ``write_dicom(path, pixels, photometric, bits, **elements)``."""
    return _write_dicom


@pytest.fixture(autouse=True, scope="session")
def no_kept_models():
    # Runs keep trained diffusion models in ~/.cache/dia; tests keep none (tests of keeping
    # point DIA_CACHE at a folder of their own).
    import os

    before = os.environ.get("DIA_CACHE")
    os.environ["DIA_CACHE"] = "off"
    yield
    if before is None:
        os.environ.pop("DIA_CACHE", None)
    else:
        os.environ["DIA_CACHE"] = before
