"""The README's Python blocks run as written, in order, in one namespace (in a fresh folder)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md (python block {i + 1})", "exec"), namespace)
    printed = capsys.readouterr().out
    shown = [
        line[2:] for code in blocks for line in code.splitlines() if line.startswith("# trainable params")
    ]
    assert shown and all(line in printed for line in shown)  # the printed lines the README quotes
    assert namespace["logits"].shape == (8, 15)
    assert (tmp_path / "adapters" / "obj_bg" / "adapter_model.safetensors").is_file()
    assert isinstance(namespace["model"], namespace["pointpeft"].DAPTModel)
