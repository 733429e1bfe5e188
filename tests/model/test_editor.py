"""The paired editor: its request vector, its locality and its save/load round trip."""

import torch

from model.editor import EditorConfig, PairedEditor, request_size, request_vector
from model.labels import CHEXPERT_LABELS
from model.refine.schema import StructuredFinding


def _f(label, status="present", severity=None, side=None, zones=()):
    return StructuredFinding(label=label, status=status, severity=severity, side=side, zones=zones)


SEV = len(CHEXPERT_LABELS)  # the severity's place; the sides and zones follow it


def test_request_vector_signs_and_severity():
    v = request_vector(
        [_f("Pleural Effusion", severity="severe"), _f("Pneumothorax", "absent"), _f("Edema", "uncertain")]
    )
    assert len(v) == request_size()
    assert v[CHEXPERT_LABELS.index("Pleural Effusion")] == 1 and v[CHEXPERT_LABELS.index("Pneumothorax")] == -1
    assert v[CHEXPERT_LABELS.index("Edema")] == 0 and v[SEV] == 1.0
    assert request_vector([_f("No Finding")]).abs()[:SEV].sum() == 0 and request_vector([])[SEV] == 0.5
    assert request_vector([_f("Fracture", severity="mild")])[SEV] == 0.0
    assert v[SEV + 1 :].abs().sum() == 0  # no side nor zone stated


def test_request_vector_location():
    where = lambda f: [float(a) for a in request_vector([f])[SEV + 1 :]]  # noqa: E731
    assert where(_f("Atelectasis", side="left", zones=("lower",))) == [0, 1, 0, 0, 1]
    assert where(_f("Lung Lesion", "absent", side="right", zones=("apical",))) == [1, 0, 1, 0, 0]
    assert where(_f("Edema", side="bilateral", zones=("perihilar", "basal"))) == [1, 1, 0, 1, 1]
    assert where(_f("Pneumonia", "uncertain", side="left")) == [0, 0, 0, 0, 0]


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
