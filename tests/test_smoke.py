"""The tour of the README, through the SDK, on both databases."""

from __future__ import annotations

from pathlib import Path

from modeldepot import Client

from .conftest import write_tree


def test_upload_list_download_roundtrip(admin: Client, project: str, tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "ck",
        {
            "a.txt": b"hello",
            "sub/weights.bin": bytes(range(256)) * 1000,
            "sub/deep/ünï cödé.txt": b"unicode",
            "gradient-model-metadata.json": b'{"framework": "numpy"}',
        },
    )
    model = admin.upload(src, project=project, name="resnet", summary={"accuracy": 0.9}, tags=["cnn"])
    assert model.state == "ready"
    assert model.version == 1
    assert model.type == "Custom"
    assert model.metadata == {"framework": "numpy"}
    assert [m.id for m in admin.list_models(project=project).items] == [model.id]
    out = tmp_path / "out"
    admin.download(model.id, out)
    for rel in ("a.txt", "sub/weights.bin", "sub/deep/ünï cödé.txt"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
