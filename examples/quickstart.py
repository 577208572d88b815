"""Wrap a Point-MAE backbone with DAPT, count what trains, take one training step, save the adapter and load
it back.

Run: python examples/quickstart.py
"""

import tempfile

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

# Save only what training changed (a few MB), then rebuild the model from a fresh backbone and the files.
# The backbone must be built (and its pre-trained weights loaded) as before: here, the same seed.
model.eval()
with tempfile.TemporaryDirectory() as folder:
    model.save_adapter(folder)  # adapter_config.json + adapter_model.safetensors
    torch.manual_seed(0)
    restored = pointpeft.load_adapter(pointpeft.backbones.PointMAE(pos_mode="once"), folder).eval()
with torch.no_grad():
    same = torch.equal(restored(points), model(points))
print(f"adapter round trip gives identical logits: {same}")
assert same
