"""Knowledge distillation: an exported model file teaches a run (`--teacher MODEL.pt`).

The student learns the teacher's whole distribution over the classes, softened by
engine.KD_TAU (Hinton et al., 2015), beside the labels: how alike two landmarks look and,
on outlier-exposure photos, how unsure to be. Used to put the transfer model's knowledge
into a cheaper network (issue: a faster model) or into the scratch CNN.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from train.presets import Preset


class Teacher(nn.Module):
    """An exported model's network, rebuilt eager and frozen, scoring the student's own
    training views: they arrive normalised for the student and are normalised again for
    the teacher. Returns the teacher's logits (before its calibration temperature)."""

    def __init__(self, path: Path, student: Preset, classes: list[str]) -> None:
        super().__init__()
        from train.finish.reexport import rebuild_or_exit  # the one way back from a model file
        net, preset, exp = rebuild_or_exit(path, "--teacher")
        if exp.classes != classes:
            sys.exit(f"error: --teacher {path}: its {len(exp.classes)} classes are not the "
                     f"{len(classes)} classes of --data, in the same order")
        self.net = net.eval().requires_grad_(False)
        mean_s, std_s = torch.tensor(student.mean), torch.tensor(student.std)
        mean_t, std_t = torch.tensor(preset.mean), torch.tensor(preset.std)
        # x_teacher = (x * std_s + mean_s - mean_t) / std_t, per channel
        self.register_buffer("scale", (std_s / std_t).view(1, 3, 1, 1))
        self.register_buffer("shift", ((mean_s - mean_t) / std_t).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.scale + self.shift).float()
