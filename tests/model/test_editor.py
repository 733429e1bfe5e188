"""The paired editor: its request vector, its locality and its save/load round trip."""

import torch

from model.editor import EditorConfig, PairedEditor, request_vector
from model.labels import CHEXPERT_LABELS
from model.refine.schema import StructuredFinding


def _f(label, status="present", severity=None):
    return StructuredFinding(label=label, status=status, severity=severity)


def test_request_vector_signs_and_severity():
    v = request_vector(
        [_f("Pleural Effusion", severity="severe"), _f("Pneumothorax", "absent"), _f("Edema", "uncertain")]
    )
    assert v[CHEXPERT_LABELS.index("Pleural Effusion")] == 1 and v[CHEXPERT_LABELS.index("Pneumothorax")] == -1
    assert v[CHEXPERT_LABELS.index("Edema")] == 0 and v[-1] == 1.0
    assert request_vector([_f("No Finding")]).abs()[:-1].sum() == 0 and request_vector([])[-1] == 0.5
    assert request_vector([_f("Fracture", severity="mild")])[-1] == 0.0


def _editor():
    torch.manual_seed(0)
    e = PairedEditor(EditorConfig(base_channels=4, depth=2, fine_channels=4, norm_groups=2, image_size=32))
    torch.nn.init.normal_(e.head.weight)  # trained editors draw something; a fresh one draws nothing
    return e.eval()


def test_the_change_is_zero_outside_the_prior_and_follows_the_request(tmp_path):
    e = _editor()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    prior = torch.zeros(2, 1, 32, 32)
    prior[:, :, 8:20, 4:14] = 1
    req = torch.stack([request_vector([_f("Edema")]), request_vector([_f("Fracture")])])
    with torch.no_grad():
        d = e(x, x, x, prior, req)
    assert d.shape == (2, 1, 32, 32) and d[prior == 0].abs().max() == 0 and d[prior == 1].abs().max() > 0
    assert not torch.allclose(d[0], d[1])  # another request, another change
    e.save_pretrained(tmp_path / "editor")
    with torch.no_grad():
        assert torch.equal(PairedEditor.from_pretrained(tmp_path / "editor")(x, x, x, prior, req), d)


def test_a_fresh_editor_changes_nothing():
    e = PairedEditor(EditorConfig(base_channels=4, depth=2, fine_channels=4, norm_groups=2, image_size=32))
    x = torch.rand(1, 1, 32, 32)
    assert e(x, x, x, torch.ones_like(x), request_vector([_f("Edema")])[None]).abs().max() == 0
