"""HeadCLIP's training losses (eq. 10-11), with AnomalyCLIP's focal and dice definitions.

Local loss on the upsampled probability maps: focal([P_normal, P_abnormal], mask) +
dice(P_abnormal, mask) + dice(P_normal, 1 - mask); global loss: cross-entropy of the CLS
logits against the image label. Total = global + local_weight * local, local_weight 1 in the
paper's eq. (11). With several read-out blocks the local loss is summed over their maps, as
AnomalyCLIP's training script does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_GAMMA = 2.0
# AnomalyCLIP's focal loss clamps the one-hot target to [smooth, 1 - smooth] and adds smooth to
# p_t before the log, so a saturated prediction never gives log(0).
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Mean focal loss of two-class probabilities (B, 2, H, W) against a 0/1 mask (B, H, W)."""
    target = torch.stack([1.0 - mask, mask], dim=1).clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
    p_t = (target * probs).sum(dim=1) + FOCAL_SMOOTH
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over the batch of the smoothed Dice coefficient of (B, H, W) maps."""
    pred = pred.flatten(1)
    target = target.flatten(1)
    overlap = (pred * target).sum(dim=1)
    coefficient = (2.0 * overlap + DICE_SMOOTH) / (
        pred.sum(dim=1) + target.sum(dim=1) + DICE_SMOOTH
    )
    return 1.0 - coefficient.mean()


def headclip_loss(
    image_logits: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    masks: torch.Tensor,
    local_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy on the image label plus focal + two dice terms on each read-out's pixel
    maps; ``probs`` is (B, L, 2, H, W)."""
    local = image_logits.new_zeros(())
    for layer in probs.unbind(dim=1):
        local = local + focal_loss(layer, masks)
        local = local + dice_loss(layer[:, 1], masks) + dice_loss(layer[:, 0], 1.0 - masks)
    return F.cross_entropy(image_logits, labels) + local_weight * local
