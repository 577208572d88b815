"""Wrap a Point-MAE backbone with DAPT, count what trains, and take one training step.

Run: python examples/quickstart.py
"""

import torch

import pointpeft

torch.manual_seed(0)
# The DAPT reference adds the positional embedding once, before the first block.
backbone = pointpeft.backbones.PointMAE(pos_mode="once")
# Load official pre-trained Point-MAE weights here, if you have them:
#   result = pointpeft.load_pretrained(backbone, "pretrain.pth")  # result.missing_keys: cls_token, cls_pos

model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5))
pointpeft.print_trainable_parameters(model)  # trainable params: 1,087,771 || all params: 22,912,795 || ...

points = torch.rand(4, 2048, 3) * 2 - 1  # (B, N, 3)
labels = torch.tensor([0, 3, 7, 14])
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.05)

logits = model(points)  # (B, 15)
loss = torch.nn.functional.cross_entropy(logits, labels)
loss.backward()
optimizer.step()
print(f"logits {tuple(logits.shape)}, loss {loss.item():.3f}")
