"""The seed's pipeline, the yardstick of the benchmarks: per-image torchvision preprocessing and a two-pass Grad-CAM."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def seed_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The seed's per-image preprocessing: torchvision Resize((size, size)), ToTensor, Normalize."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


class Baseline:
    """The pipeline this project started from, kept here as the yardstick and nowhere else."""

    def __init__(self, num_classes: int, size: int, device: torch.device):
        from torchvision import models

        self.device = device
        self.model = models.resnet50(weights=None)
        self.model.fc = nn.Linear(self.model.fc.in_features, num_classes)
        self.model.eval().to(device)
        self.transform = seed_transform(size)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """Probabilities and the top-1 class's GradCAM heatmap, the seed's way: two passes and a backward."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = self.transform(image.convert("RGB")).unsqueeze(0).to(self.device)
        with torch.no_grad():
            probs = self.model(x).softmax(dim=1)[0]
        with GradCAM(model=self.model, target_layers=[self.model.layer4[-1]]) as cam:
            heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(probs.argmax()))])[0]
        return probs.cpu(), heatmap
