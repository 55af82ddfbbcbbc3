"""Loss modules on one process: values against hand computations, centre bookkeeping, masking, precision."""

import math

import pytest
import torch
import torch.nn.functional as F

from tips.losses import (
    ContrastiveLoss,
    DINOLoss,
    FeatureDistillLoss,
    IBOTPatchLoss,
    PixelReconstructionLoss,
    SigmoidBias,
    centered_softmax,
    gather_with_grad,
    patchify,
    select_patches,
    sinkhorn_knopp,
    target_statistics,
)


def reference_sinkhorn(logits: torch.Tensor, temp: float, n_iters: int) -> torch.Tensor:
    """DINOv2's single-process Sinkhorn–Knopp, written out with explicit loops over rows and columns."""
    q = torch.exp(logits.double() / temp).t()  # (K, T)
    k, t = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        for row in range(k):
            q[row] = q[row] / q[row].sum() / k
        for col in range(t):
            q[:, col] = q[:, col] / q[:, col].sum() / t
    return (q * t).t()


def test_sinkhorn_matches_a_reference_loop_and_rows_sum_to_one():
    logits = torch.randn(6, 5)
    targets = sinkhorn_knopp(logits, temp=0.5, n_iters=3)
    assert targets.dtype == torch.float32 and targets.shape == (6, 5)
    assert torch.allclose(targets.double(), reference_sinkhorn(logits, 0.5, 3), atol=1e-6)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6), atol=1e-6)


def test_sinkhorn_converges_to_equal_prototype_mass():
    targets = sinkhorn_knopp(torch.randn(12, 4), temp=0.5, n_iters=200)
    assert torch.allclose(targets.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-4)  # T/K samples per prototype


def test_sinkhorn_stays_finite_with_large_logits_and_sharp_temperature():
    logits = torch.randn(8, 16) * 10  # exp(±25/0.04) overflows without the shift
    targets = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(targets).all()
    assert torch.allclose(targets.sum(dim=1), torch.ones(8), atol=1e-5)


def test_centered_softmax_subtracts_the_centre_before_the_temperature():
    logits, center = torch.randn(3, 4), torch.randn(1, 4)
    expected = torch.exp((logits - center) / 0.07)
    expected = expected / expected.sum(dim=1, keepdim=True)
    assert torch.allclose(centered_softmax(logits, center, 0.07), expected, atol=1e-6)


def test_dino_loss_equals_a_hand_computed_value():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])  # (B=1, M=2, K=3)
    teacher = torch.tensor([[0.2, 0.1, 0.0]])  # (1, 3)
    loss = DINOLoss(3, student_temp=0.1, center_init="zeros")(student, teacher, teacher_temp=0.05)
    p = [math.exp(v / 0.05) for v in (0.2, 0.1, 0.0)]
    p = [v / sum(p) for v in p]
    total = 0.0
    for crop in student[0].tolist():
        log_z = math.log(sum(math.exp(v / 0.1) for v in crop))
        total += -sum(pk * (v / 0.1 - log_z) for pk, v in zip(p, crop))
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_dino_sum_reduction_is_the_number_of_crops_times_the_mean():
    student, teacher = torch.randn(4, 6, 8), torch.randn(4, 8)
    mean = DINOLoss(8, reduction="mean").eval()(student, teacher, 0.04)
    total = DINOLoss(8, reduction="sum").eval()(student, teacher, 0.04)
    assert total.item() == pytest.approx(6 * mean.item(), rel=1e-5)


def test_dino_centre_is_an_ema_of_teacher_logits_updated_after_the_loss():
    loss_fn = DINOLoss(4, center_momentum=0.9, center_init="zeros")
    t1, t2 = torch.randn(3, 4), torch.randn(3, 4)
    s2 = torch.randn(3, 2, 4)
    loss_fn(torch.randn(3, 2, 4), t1, 0.04)
    c1 = 0.1 * t1.mean(dim=0, keepdim=True)
    assert torch.allclose(loss_fn.center, c1, atol=1e-6)
    loss2 = loss_fn(s2, t2, 0.04)
    # Step 2 used c1, which holds only step 1's statistics.
    expected = -(centered_softmax(t2, c1, 0.04).unsqueeze(1) * F.log_softmax(s2 / 0.1, dim=-1)).sum(-1).mean()
    assert loss2.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(loss_fn.center, 0.9 * c1 + 0.1 * t2.mean(dim=0, keepdim=True), atol=1e-6)
    assert "center" in loss_fn.state_dict()


@pytest.mark.parametrize("center_init", ["zeros", "first_batch"])
def test_a_non_finite_teacher_batch_leaves_the_centre_unchanged(center_init):
    loss_fn = DINOLoss(4, center_momentum=0.9, center_init=center_init)
    loss_fn(torch.randn(3, 2, 4), torch.randn(3, 4), 0.04)
    before = loss_fn.center.clone()
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    loss_fn(torch.randn(3, 2, 4), bad, 0.04)  # this step's loss is NaN and the trainer skips it
    assert torch.equal(loss_fn.center, before)
    assert torch.isfinite(loss_fn(torch.randn(3, 2, 4), torch.randn(3, 4), 0.04))  # later steps are unharmed


def test_centre_stays_put_in_eval_mode_and_under_sinkhorn():
    for loss_fn in (DINOLoss(4).eval(), DINOLoss(4, centering="sinkhorn_knopp")):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 4), 0.04)
        assert torch.all(loss_fn.center == 0)


def test_target_statistics_read_sharpness_and_prototype_use():
    k = 8
    uniform = torch.full((5, k), 1 / k)
    assert torch.allclose(target_statistics(uniform), torch.tensor([math.log(k), math.log(k)]), atol=1e-6)
    collapsed = F.one_hot(torch.full((5,), 3), k).float()  # every row on one prototype
    assert torch.allclose(target_statistics(collapsed), torch.zeros(2), atol=1e-6)
    spread = F.one_hot(torch.tensor([0, 1, 2, 3]), k).float()  # sharp rows, four prototypes used alike
    assert torch.allclose(target_statistics(spread), torch.tensor([0.0, math.log(4)]), atol=1e-6)
    assert torch.equal(target_statistics(torch.zeros(0, k)), torch.zeros(2))


@pytest.mark.parametrize("centering", ["ema", "sinkhorn_knopp"])
def test_dino_loss_minus_the_logged_target_entropy_is_the_students_kl(centering):
    loss_fn = DINOLoss(6, student_temp=0.1, centering=centering, center_init="zeros")
    teacher = torch.randn(4, 6)
    targets = loss_fn.eval().teacher_probs(teacher, 0.1)
    loss_fn.train()
    # A student whose softmax equals the teacher's targets scores exactly their entropy (KL = 0) ...
    perfect = (0.1 * targets.log()).unsqueeze(1).expand(-1, 3, -1)
    loss, stats = loss_fn.compute(perfect, teacher, 0.1, with_stats=True)
    assert loss.item() == pytest.approx(stats[0].item(), rel=1e-5)
    assert stats[0].item() == pytest.approx(target_statistics(targets)[0].item(), rel=1e-5)
    # ... and any other student scores more.
    loss_fn = DINOLoss(6, student_temp=0.1, centering=centering, center_init="zeros")
    loss, stats = loss_fn.compute(torch.randn(4, 3, 6), teacher, 0.1, with_stats=True)
    assert loss.item() > stats[0].item()


def test_target_stats_are_returned_in_training_only_and_never_saved():
    loss_fn = IBOTPatchLoss(4).eval()
    args = (torch.randn(5, 4), torch.randn(5, 4), torch.full((5,), 0.2), 0.04)
    assert loss_fn.compute(*args, with_stats=True)[1] is None
    assert set(loss_fn.state_dict()) == {"center", "center_ready"}
    _, stats = loss_fn.train().compute(*args, with_stats=True)
    assert 0 < stats[0] <= stats[1] + 1e-6 <= math.log(4) + 1e-5
    assert loss_fn.compute(*args)[1] is None  # no statistics unless asked: they cost an all-reduce


def test_no_gradient_reaches_the_teacher_logits():
    teacher = torch.randn(5, 8, requires_grad=True)
    student = torch.randn(5, 2, 8, requires_grad=True)
    DINOLoss(8)(student, teacher, 0.04).backward()
    patches_t = torch.randn(5, 8, requires_grad=True)
    patches_s = torch.randn(5, 8, requires_grad=True)
    IBOTPatchLoss(8, centering="sinkhorn_knopp")(patches_s, patches_t, torch.full((5,), 0.2), 0.04).backward()
    assert teacher.grad is None and patches_t.grad is None
    assert student.grad is not None and patches_s.grad is not None


def test_select_patches_weights_masked_patches_per_image_then_per_masked_image():
    mask = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    index, weights = select_patches(mask, all_patches=False)
    assert index.tolist() == [0, 2, 9]
    # Two images have masked patches: 1/(2·2) each for image 0's pair, 1/(1·2) for image 2's one.
    assert weights.tolist() == [0.25, 0.25, 0.5]
    index, weights = select_patches(mask, all_patches=True)
    assert index.tolist() == list(range(12))
    assert torch.allclose(weights, torch.full((12,), 1 / 12))


def test_ibot_loss_is_the_mean_over_images_of_the_mean_over_their_masked_patches():
    b, n, k = 3, 5, 6
    mask = torch.rand(b, n) < 0.5
    mask[0] = False  # an image with nothing masked must not count
    mask[1, 0] = True
    student, teacher = torch.randn(b, n, k), torch.randn(b, n, k)
    index, weights = select_patches(mask, all_patches=False)
    loss_fn = IBOTPatchLoss(k, center_init="zeros")
    loss = loss_fn(student.flatten(0, 1)[index], teacher.flatten(0, 1)[index], weights, 0.05)
    per_image = []
    for i in range(b):
        if mask[i].any():
            p = F.softmax(teacher[i][mask[i]] / 0.05, dim=-1)
            per_image.append(-(p * F.log_softmax(student[i][mask[i]] / 0.1, dim=-1)).sum(-1).mean())
    assert loss.item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)
    # The centre only sees the teacher logits that entered the loss.
    assert torch.allclose(loss_fn.center, 0.1 * teacher[mask].mean(dim=0, keepdim=True), atol=1e-6)


def test_ibot_loss_is_zero_with_no_selected_patch():
    loss_fn = IBOTPatchLoss(4, center_init="zeros")
    student = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(student, torch.zeros(0, 4), torch.zeros(0), 0.04)
    assert loss.item() == 0 and torch.all(loss_fn.center == 0)
    loss.backward()


def test_patchify_is_row_major_with_pixels_in_p_p_3_order():
    images = torch.randn(2, 3, 4, 6)
    patches = patchify(images, 2)  # (2, 6, 12) on a 2×3 grid
    # Patch 5 is grid row 1, column 2; its pixels run (row, column, channel).
    assert torch.equal(patches[1, 5], images[1, :, 2:4, 4:6].permute(1, 2, 0).flatten())


def test_pixel_loss_uses_per_patch_normalised_targets_and_ignores_visible_patches():
    loss_fn = PixelReconstructionLoss(patch_size=2)
    images = torch.rand(2, 3, 4, 4)
    target = loss_fn.target(images)  # (2, 4, 12)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 4), atol=1e-3)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    pred = target.clone()
    pred[~mask] += torch.randn(5, 12)  # wrong only where nothing is masked
    assert loss_fn(pred, images, mask).item() == pytest.approx(0.0, abs=1e-10)
    pred[mask] += 1.0
    assert loss_fn(pred, images, mask).item() == pytest.approx(1.0, rel=1e-5)
    raw = PixelReconstructionLoss(patch_size=2, norm_pix=False)
    assert raw(patchify(images, 2), images, mask).item() == 0.0


def test_feature_distill_loss_is_one_minus_cosine():
    student = torch.randn(2, 5, 8, requires_grad=True)
    teacher = torch.randn(2, 5, 8, requires_grad=True)
    loss_fn = FeatureDistillLoss()
    assert loss_fn(teacher.detach() * 3, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(-teacher.detach(), teacher).item() == pytest.approx(2.0, abs=1e-6)
    loss_fn(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def reference_softmax_clip(image, text, scale):
    """Symmetric InfoNCE on one process, written out per row."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = scale * image @ text.t()
    rows = [-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(len(image))]
    cols = [-(logits[i, i] - torch.logsumexp(logits[:, i], 0)) for i in range(len(image))]
    return 0.5 * (torch.stack(rows).mean() + torch.stack(cols).mean())


def test_softmax_contrastive_loss_matches_symmetric_infonce():
    image, text, log_scale = torch.randn(6, 8), torch.randn(6, 8), torch.tensor(math.log(1 / 0.07))
    loss = ContrastiveLoss("softmax")(image, text, log_scale)
    assert loss.item() == pytest.approx(reference_softmax_clip(image, text, log_scale.exp()).item(), rel=1e-5)


def test_sigmoid_contrastive_loss_matches_siglip():
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    log_scale, bias = torch.tensor(math.log(10.0)), SigmoidBias()
    loss = ContrastiveLoss("sigmoid")(image, text, log_scale, bias())
    logits = 10.0 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t() - 10.0
    labels = 2 * torch.eye(5) - 1
    expected = sum(-math.log(torch.sigmoid(labels[i, j] * logits[i, j]).item()) for i in range(5) for j in range(5))
    assert loss.item() == pytest.approx(expected / 5, rel=1e-5)
    with pytest.raises(ValueError):
        ContrastiveLoss("sigmoid")(image, text, log_scale)


def test_gather_with_grad_is_the_identity_on_one_process():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


def test_losses_are_fp32_and_finite_from_bf16_inputs_under_autocast():
    bf16 = torch.bfloat16
    mask = torch.rand(2, 4) < 0.5
    mask[:, 0] = True
    index, weights = select_patches(mask, all_patches=False)
    with torch.autocast("cpu", dtype=bf16):
        losses = [
            ContrastiveLoss("softmax")(torch.randn(4, 8, dtype=bf16), torch.randn(4, 8, dtype=bf16), torch.tensor(4.6)),
            ContrastiveLoss("sigmoid")(
                torch.randn(4, 8, dtype=bf16), torch.randn(4, 8, dtype=bf16), torch.tensor(2.3), torch.tensor(-10.0)
            ),
            DINOLoss(16)(torch.randn(2, 3, 16, dtype=bf16), torch.randn(2, 16, dtype=bf16), 0.04),
            DINOLoss(16, centering="sinkhorn_knopp")(
                torch.randn(2, 3, 16, dtype=bf16), torch.randn(2, 16, dtype=bf16), 0.04
            ),
            IBOTPatchLoss(16)(
                torch.randn(len(index), 16, dtype=bf16), torch.randn(len(index), 16, dtype=bf16), weights, 0.04
            ),
            PixelReconstructionLoss(2)(torch.randn(2, 4, 12, dtype=bf16), torch.rand(2, 3, 4, 4, dtype=bf16), mask),
            FeatureDistillLoss()(torch.randn(2, 4, 8, dtype=bf16), torch.randn(2, 4, 8, dtype=bf16)),
        ]
    for loss in losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_first_batch_centre_init_removes_the_batch_common_component_at_step_zero():
    torch.manual_seed(0)
    common = torch.zeros(1, 8)
    common[0, 3] = 5.0  # every image's teacher logits favour prototype 3 at init
    teacher = common + 0.01 * torch.randn(6, 8)
    zeros, first = DINOLoss(8, center_init="zeros"), DINOLoss(8)
    assert zeros.teacher_probs(teacher, 0.04)[:, 3].min() > 0.99  # collapsed targets
    probs = first.teacher_probs(teacher, 0.04)
    assert torch.allclose(first.center, teacher.mean(0, keepdim=True))
    assert probs[:, 3].max() < 0.9 and bool(first.center_ready)
    before = first.center.clone()
    first.teacher_probs(teacher + 1.0, 0.04)  # only the first batch initialises; later ones use the EMA
    assert torch.equal(first.center, before)
