"""The GPL-licensed JPEG decoder is an extra (`whatif-cxr[gpl-codecs]`): without it a JPEG Lossless
upload is refused with 415 and a reason that names the missing decoder and the extra."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file

from api import dicom
from api.rejection import UploadRejected


def test_a_syntax_without_its_decoder_says_which_extra_decodes_it(monkeypatch):
    data = open(get_testdata_file("JPEG-LL.dcm"), "rb").read()
    ds = dicom.read_dicom(data, 1 << 28)  # installed here (make install): read
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    monkeypatch.setattr(dicom, "_decodable", lambda syntax: False)
    with pytest.raises(UploadRejected) as exc:
        dicom.read_dicom(data, 1 << 28)
    assert exc.value.status == 415 and "no decoder for the DICOM transfer syntax JPEG Lossless" in exc.value.message
    assert "whatif-cxr[gpl-codecs]" in exc.value.message
