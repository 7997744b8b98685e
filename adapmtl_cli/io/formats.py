"""Telling file kinds apart from their first bytes, without importing torch."""

from __future__ import annotations

from pathlib import Path


def is_torch_save_file(path: Path) -> bool:
    """A torch.save file (zip archive or an old raw pickle), as the reference writes ``.model``."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(2)
    return path.suffix in (".model", ".pt", ".pth") or head == b"PK" or head[:1] == b"\x80"
