import numpy as np
import torch

from core.losses import box_mask, classification_loss, masked_global_average, reconstruction_loss, segmentation_loss


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_classification_loss_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=g) * 3
    tags = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    x, y = logits.double().numpy(), tags.double().numpy()
    expected = -(y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x)).mean(axis=1).mean()
    np.testing.assert_allclose(classification_loss(logits, tags).item(), expected, rtol=1e-6)


def test_box_mask_is_half_open():
    mask = box_mask(torch.tensor([[1, 0, 3, 2]]), (3, 4))
    assert mask.int().tolist() == [[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]


def test_masked_global_average_inside_the_valid_box():
    cam = torch.arange(2 * 16, dtype=torch.float32).reshape(1, 2, 4, 4)
    torch.testing.assert_close(masked_global_average(cam), cam.mean(dim=(2, 3)))
    # Image 16x16, CAM grid 4x4 (stride 4). Box covers the left 8 columns and top 12 rows:
    # exactly CAM cells rows 0-2, columns 0-1.
    valid = box_mask(torch.tensor([[0, 0, 8, 12]]), (16, 16))
    expected = cam[:, :, :3, :2].mean(dim=(2, 3))
    torch.testing.assert_close(masked_global_average(cam, valid), expected)
    # A box ending half-way through a cell counts that cell with weight 1/2.
    valid = box_mask(torch.tensor([[0, 0, 6, 4]]), (16, 16))  # row 0, columns 0 and half of 1
    c = cam[0, 0, 0].numpy()
    expected0 = (c[0] * 1.0 + c[1] * 0.5) / 1.5
    np.testing.assert_allclose(masked_global_average(cam, valid)[0, 0].item(), expected0, rtol=1e-6)


def test_reconstruction_loss_matches_numpy_and_ignores_untagged_classes():
    g = torch.Generator().manual_seed(1)
    cam = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.rand(2, 3, 8, 8, generator=g)  # stride 4 vs CAM grid: 2x2 average pooling
    tags = torch.tensor([[1, 0, 1], [0, 1, 0]])
    a = np.maximum(cam.double().numpy(), 0)
    a = a / (a.max(axis=(2, 3), keepdims=True) + 1e-5)
    t = target.double().numpy().reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    maps = [np.abs(a[b, c] - t[b, c]).mean() for b in range(2) for c in range(3) if tags[b, c]]
    expected = np.mean(maps)
    np.testing.assert_allclose(reconstruction_loss(cam, target, tags).item(), expected, rtol=1e-5)
    # Changing an untagged class (CAM or target) does not change the loss.
    cam2, target2 = cam.clone(), target.clone()
    cam2[0, 1] = 100.0
    target2[1, 2] = 0.0
    torch.testing.assert_close(reconstruction_loss(cam2, target2, tags), reconstruction_loss(cam, target, tags))


def test_reconstruction_loss_gradient_reaches_the_cam_of_tagged_classes_only():
    g = torch.Generator().manual_seed(2)
    cam = torch.randn(1, 2, 3, 3, generator=g).requires_grad_(True)
    target = torch.rand(1, 2, 3, 3, generator=g).requires_grad_(True)
    loss = reconstruction_loss(cam, target, torch.tensor([[1, 0]]))
    loss.backward()
    assert cam.grad[0, 0].abs().sum() > 0
    assert (cam.grad[0, 1] == 0).all()
    assert target.grad is None  # the target is a constant


def test_reconstruction_loss_without_tags_is_zero():
    cam = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = reconstruction_loss(cam, torch.rand(1, 2, 3, 3), torch.zeros(1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert (cam.grad == 0).all()


def test_reconstruction_loss_averages_over_valid_cells_only():
    # Image 16 x 16, CAM grid 4 x 4. Image 0: box of the left 8 columns and top 12 rows (CAM cells
    # rows 0-2, columns 0-1); image 1: a box ending 1 pixel into cell column 2 (3/4 of it is
    # padding: padding) and 2 pixels into cell row 3 (half image: image). A cell counts when at
    # least half of it is image.
    g = torch.Generator().manual_seed(3)
    cam = torch.randn(2, 2, 4, 4, generator=g) * 2
    target = torch.rand(2, 2, 4, 4, generator=g)
    tags = torch.tensor([[1, 1], [0, 1]])
    valid = box_mask(torch.tensor([[0, 0, 8, 12], [0, 0, 9, 14]]), (16, 16))
    cells = [(slice(0, 3), slice(0, 2)), (slice(0, 4), slice(0, 2))]
    maps = []
    for b in range(2):
        for c in range(2):
            if tags[b, c]:
                a = np.maximum(cam[b, c][cells[b]].double().numpy(), 0)  # max over valid cells only
                a = a / (a.max() + 1e-5)
                maps.append(np.abs(a - target[b, c][cells[b]].double().numpy()).mean())
    loss = reconstruction_loss(cam, target, tags, valid)
    np.testing.assert_allclose(loss.item(), np.mean(maps), rtol=1e-5)

    # Padded cells have no influence: new CAM and target values there leave the loss unchanged.
    cam2, target2 = cam.clone(), target.clone()
    padded = torch.ones(2, 4, 4, dtype=torch.bool)
    for b in range(2):
        padded[b][cells[b]] = False
    cam2[padded[:, None].expand_as(cam2)] = 50.0
    target2[padded[:, None].expand_as(target2)] = 0.0
    torch.testing.assert_close(reconstruction_loss(cam2, target2, tags, valid), loss)
    assert abs(reconstruction_loss(cam2, target2, tags).item() - reconstruction_loss(cam, target, tags).item()) > 0.01

    # and they get no gradient
    cam3 = cam.clone().requires_grad_(True)
    reconstruction_loss(cam3, target, tags, valid).backward()
    assert (cam3.grad[padded[:, None].expand_as(cam3)] == 0).all() and cam3.grad.abs().sum() > 0


def test_reconstruction_loss_under_cpu_bf16_autocast_equals_float32():
    g = torch.Generator().manual_seed(4)
    cam = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.rand(2, 3, 8, 8, generator=g)
    tags = torch.tensor([[1, 0, 1], [0, 1, 0]])
    valid = box_mask(torch.tensor([[0, 0, 12, 16], [0, 0, 16, 8]]), (16, 16))
    expected = reconstruction_loss(cam, target, tags, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reconstruction_loss(cam.bfloat16(), target, tags, valid)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reconstruction_loss(cam.bfloat16().float(), target, tags, valid), atol=1e-6, rtol=0)
    assert abs(got.item() - expected.item()) < 1e-2  # only the bf16 rounding of the input CAM


def numpy_cross_entropy(logits, labels, ignore=255):
    x = logits.double().numpy()
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    terms = []
    for b, y, xx in np.argwhere(labels.numpy() != ignore):
        terms.append(lse[b, y, xx] - x[b, labels[b, y, xx], y, xx])
    return np.mean(terms)


def test_segmentation_loss_matches_numpy_and_resizes_labels_nearest():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.randint(0, 4, (2, 3, 3), generator=g)
    labels[0, 1, 1] = 255
    labels[1, 0] = 255
    np.testing.assert_allclose(segmentation_loss(logits, labels).item(), numpy_cross_entropy(logits, labels), rtol=1e-6)
    big = labels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (2, 6, 6)
    torch.testing.assert_close(segmentation_loss(logits, big), segmentation_loss(logits, labels))


def test_segmentation_loss_all_ignore_is_zero_with_grad():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
