"""DICOM pixels to grey, shared by the upload path and the library's file loader: a degenerate
window falls back to the full pixel range (as viewers do) instead of failing."""

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from model import dicom_grey
from model.preprocess import load_image_file

GRADIENT = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))


def _dicom(path, **attrs):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DigitalXRayImageStorageForPresentation, generate_uid(), "DX"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = GRADIENT.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID", "NO_SUCH_FUNCTION"])
def test_the_file_loader_reads_a_degenerate_window_as_the_full_range(tmp_path, function):
    got = load_image_file(_dicom(tmp_path / "w0.dcm", WindowCenter=2048, WindowWidth=0, VOILUTFunction=function))
    assert any("full pixel range" in n for n in got.notes)
    assert np.allclose(got.pixels, GRADIENT / 4095.0, atol=1e-3)  # the stored values, stretched linearly


def test_a_usable_window_is_applied():
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth, ds.PhotometricInterpretation = 1024, 512, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    notes: list[str] = []
    out = dicom_grey.grey(GRADIENT, ds, notes)
    assert not notes and out.min() == 0 and out.max() == 1
    # clipped outside centre +- width / 2 (768 to 1280 of 4095)
    assert (out == 0).mean() == pytest.approx(768 / 4095, abs=0.02)
    assert (out == 1).mean() == pytest.approx(1 - 1280 / 4095, abs=0.02)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.allclose(dicom_grey.grey(GRADIENT, ds, notes), 1 - out) and notes == ["inverted MONOCHROME1"]
    assert not dicom_grey.usable_window(Dataset())  # no window: nothing to apply
