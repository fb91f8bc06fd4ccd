"""Tests of occ.registry: round trips, names, integrity checks, export/import and hostile archives."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import stat
import struct
import zipfile
from pathlib import Path

import filelock
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import occ.registry.schema as registry_schema
from occ.errors import RegistryError, UsageError
from occ.registry import SCHEMA_VERSION, Registry, SourceRecord, validate_name

# --------------------------------------------------------------------------- helpers


def make_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(4, 3, generator=gen),
        "bias": torch.arange(5, dtype=torch.int64) + seed,
        "half": torch.randn(2, 2, generator=gen).half(),
        "bf16": torch.randn(3, generator=gen).to(torch.bfloat16),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(float(seed) + 0.25),
        "odd": torch.tensor([float("nan"), float("inf"), -0.0]),
    }


META = {
    "threshold": 0.5,
    "backbone_fingerprint": "clip-b16@abc123",
    "created": "2024-01-01T00:00:00Z",
    "nested": {"list": [1, 2.5, "x", None, True], "unicode": "Ünïcode ✓"},
}


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert bits(got[key]) == bits(want[key]), key


def user_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("schema_version", "name", "files", "checksum")}


def spec_checksum(record: dict) -> str:
    """The checksum as the spec defines it, computed independently of the module."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def snapshot(root: Path) -> dict[str, str] | None:
    """Every file and folder under root, with file hashes: to prove that nothing was written."""
    if not root.exists():
        return None
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "\r" not in text, text
    return text


def version_dir(reg: Registry, name: str) -> Path:
    return reg.root / "sources" / name / (reg.root / "sources" / name / "CURRENT").read_text().strip()


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def saved(reg: Registry) -> Registry:
    reg.save("midjourney", make_tensors(1), META)
    return reg


# --------------------------------------------------------------------------- round trip and listing


def test_save_load_round_trip_is_bit_identical(reg: Registry) -> None:
    tensors = make_tensors(3)
    record = reg.save("midjourney", tensors, META)
    assert isinstance(record, SourceRecord)
    assert record.name == "midjourney"
    assert record.path == reg.root / "sources" / "midjourney" / record.version
    assert (reg.root / "sources" / "midjourney" / "CURRENT").read_text().strip() == record.version

    loaded, meta = reg.load("midjourney")
    assert_same_tensors(loaded, tensors)
    assert user_meta(meta) == META
    assert meta["name"] == "midjourney"
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["checksum"] == spec_checksum(meta)
    tensor_file = record.path / "verifier.safetensors"
    assert meta["files"] == {
        "verifier.safetensors": {
            "sha256": hashlib.sha256(tensor_file.read_bytes()).hexdigest(),
            "bytes": tensor_file.stat().st_size,
        }
    }
    assert meta == record.meta
    info = reg.info("midjourney")
    assert info == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]


def test_registry_file_layout_and_first_write(reg: Registry) -> None:
    assert not reg.root.exists()
    assert reg.names() == [] and len(reg) == 0 and "x" not in reg
    assert not reg.root.exists(), "reading must not create anything"
    reg.save("a", make_tensors(), {})
    assert json.loads((reg.root / "registry.json").read_text()) == {
        "format": "occ-registry",
        "schema_version": 1,
    }
    assert (reg.root / ".lock").exists()
    assert os.listdir(reg.root / ".staging") == []
    assert sorted(os.listdir(version_dir(reg, "a"))) == ["verifier.json", "verifier.safetensors"]


def test_tensors_are_made_contiguous_cpu_and_detached(reg: Registry) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "shares_storage": base,
        "grad": torch.ones(3, requires_grad=True) * 2,
        "empty": torch.empty(0, 3),
    }
    reg.save("views", tensors, {})
    loaded, _ = reg.load("views")
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value.detach()), key
        assert loaded[key].is_contiguous() and loaded[key].device.type == "cpu"


def test_names_len_contains(reg: Registry) -> None:
    for name in ["sdxl", "DALL-E.3", "midjourney_v6", "0day"]:
        reg.save(name, make_tensors(), {})
    assert reg.names() == sorted(["sdxl", "DALL-E.3", "midjourney_v6", "0day"])
    assert len(reg) == 4
    assert "sdxl" in reg and "DALL-E.3" in reg
    assert "SDXL" not in reg  # exact, even where the filesystem ignores case
    assert "../sdxl" not in reg and "" not in reg and 42 not in reg  # no exception for junk
    assert list(reg) == reg.names()


def test_names_ignore_uncommitted_and_foreign_entries(saved: Registry) -> None:
    sources = saved.root / "sources"
    (sources / "half-done" / "v0123456789abcdef").mkdir(parents=True)  # no CURRENT: an interrupted enroll
    (sources / ".hidden").mkdir()
    (sources / "README").write_text("not a source")
    assert saved.names() == ["midjourney"]
    saved.save("other", make_tensors(), {})
    assert not (sources / "half-done").exists(), "the next writer sweeps an uncommitted source"
    assert saved.names() == ["midjourney", "other"]


def test_refuses_overwrite_without_replace(saved: Registry) -> None:
    before = snapshot(saved.root)
    with pytest.raises(UsageError) as exc:
        saved.save("midjourney", make_tensors(9), {"threshold": 0.9})
    assert one_line(exc) == (
        f"source 'midjourney' already exists in {saved.root}; use --replace to overwrite it"
    )
    assert snapshot(saved.root) == before
    tensors, meta = saved.load("midjourney")
    assert_same_tensors(tensors, make_tensors(1))


def test_replace_swaps_version_and_deletes_the_old_folder(saved: Registry) -> None:
    old = saved.info("midjourney")
    new = saved.save("midjourney", make_tensors(2), {"threshold": 0.7}, replace=True)
    assert new.version != old.version
    assert not old.path.exists()
    assert sorted(os.listdir(saved.root / "sources" / "midjourney")) == ["CURRENT", new.version]
    tensors, meta = saved.load("midjourney")
    assert_same_tensors(tensors, make_tensors(2))
    assert user_meta(meta) == {"threshold": 0.7}
    assert os.listdir(saved.root / ".staging") == []


def test_replace_of_a_new_name_just_saves(reg: Registry) -> None:
    reg.save("fresh", make_tensors(), {}, replace=True)
    assert reg.names() == ["fresh"]


def test_remove(saved: Registry) -> None:
    saved.save("other", make_tensors(), {})
    saved.remove("midjourney")
    assert saved.names() == ["other"]
    assert not (saved.root / "sources" / "midjourney").exists()
    assert os.listdir(saved.root / ".staging") == []
    with pytest.raises(UsageError) as exc:
        saved.remove("midjourney")
    assert one_line(exc) == f"no source named 'midjourney' in registry {saved.root}"
    saved.save("midjourney", make_tensors(5), {})  # the name is free again
    assert_same_tensors(saved.load("midjourney")[0], make_tensors(5))


def test_change_stamp_moves_with_every_committed_write_and_only_then(reg: Registry, tmp_path: Path) -> None:
    assert reg.changes() is None  # nothing written yet
    seen = [None]

    def moved() -> bool:
        stamp = reg.changes()
        new = stamp is not None and stamp not in seen
        seen.append(stamp)
        return new

    reg.save("a", make_tensors(1), {})
    assert moved()
    reg.names(), reg.versions(), reg.info("a"), reg.load("a")
    assert not moved(), "reading must not move the stamp"
    reg.save("a", make_tensors(2), {}, replace=True)
    assert moved()
    with pytest.raises(UsageError):
        reg.save("a", make_tensors(3), {})  # refused: nothing committed
    assert not moved()
    archive = reg.export("a", tmp_path / "a.occ.zip")
    reg.import_file(archive, as_name="b")
    assert moved()
    reg.write_joint("joint-" + "0" * 16 + ".safetensors", b"not a model, only bytes")
    assert moved()
    reg.remove("a")
    assert moved() and reg.names() == ["b"]
    (reg.root / ".changes.0123456789abcdef.tmp").write_text("left by a crashed writer")
    reg.remove("b")
    assert moved() and [n for n in os.listdir(reg.root) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("action", ["info", "load", "remove", "export"])
def test_unknown_name_message(saved: Registry, action: str, tmp_path: Path) -> None:
    call = {
        "info": lambda: saved.info("ghost"),
        "load": lambda: saved.load("ghost"),
        "remove": lambda: saved.remove("ghost"),
        "export": lambda: saved.export("ghost", tmp_path),
    }[action]
    with pytest.raises(UsageError) as exc:
        call()
    assert one_line(exc) == f"no source named 'ghost' in registry {saved.root}"


def test_unknown_name_in_missing_registry(reg: Registry) -> None:
    with pytest.raises(UsageError, match="no source named 'x' in registry"):
        reg.load("x")
    assert not reg.root.exists()


def test_unknown_name_suggests_other_case(saved: Registry) -> None:
    with pytest.raises(UsageError) as exc:
        saved.info("MidJourney")
    assert "did you mean 'midjourney'" in one_line(exc)


def test_names_differing_only_in_case_are_refused(saved: Registry) -> None:
    with pytest.raises(UsageError) as exc:
        saved.save("MidJourney", make_tensors(), {}, replace=True)
    assert "differs only in letter case" in one_line(exc)
    assert saved.names() == ["midjourney"]


def test_registry_fields_in_meta_are_set_by_the_registry(saved: Registry) -> None:
    _, meta = saved.load("midjourney")
    # Re-saving loaded metadata under another name is a normal thing to do.
    record = saved.save("copy", make_tensors(1), meta)
    assert record.meta["name"] == "copy"
    sneaky = dict(META, name="evil", checksum="0" * 64, schema_version=99, files={})
    saved.save("sneaky", make_tensors(), sneaky)
    _, loaded = saved.load("sneaky")
    assert loaded["name"] == "sneaky" and loaded["schema_version"] == 1
    assert user_meta(loaded) == META


def test_registry_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCC_REGISTRY", str(tmp_path / "envreg"))
    assert Registry().root == (tmp_path / "envreg").absolute()
    assert Registry(tmp_path / "explicit").root == tmp_path / "explicit"


def test_refuses_to_write_into_a_foreign_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError) as exc:
        Registry(home).save("a", make_tensors(), {})
    assert "is not an occ registry" in one_line(exc)
    assert sorted(os.listdir(home)) == ["thesis.tex"]


def test_root_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RegistryError, match="is not a folder"):
        Registry(path).save("a", make_tensors(), {})


# --------------------------------------------------------------------------- names

INVALID_NAMES = [
    "../x",
    "/abs",
    "a/b",
    "a\\b",
    "",
    ".",
    "..",
    "...",
    ".hidden",
    "x" * 65,
    "nul",
    "NUL",
    "con.txt",
    "com1",
    "LPT9",
    "aux.json",
    "prn",
    "a..b",
    "trailing.",
    "-dash",
    "_under",
    "sp ace",
    "tab\t",
    "new\nline",
    "nul\x00byte",
    "ünicode",
    "a:b",
    "C:",
    "a*",
]
VALID_NAMES = [
    "midjourney",
    "SDXL-1.0",
    "a",
    "0",
    "x" * 64,
    "dall_e.3",
    "con1",
    "nullable",
    "com10",
    "v1.2-rc_3",
]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused_everywhere(saved: Registry, tmp_path: Path, name: str) -> None:
    export = saved.export("midjourney", tmp_path / "good.zip")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError) as exc:
        validate_name(name)
    assert one_line(exc).startswith("invalid source name ")
    calls = [
        lambda: saved.save(name, make_tensors(), {}),
        lambda: saved.save(name, make_tensors(), {}, replace=True),
        lambda: saved.info(name),
        lambda: saved.load(name),
        lambda: saved.remove(name),
        lambda: saved.export(name, tmp_path),
        lambda: saved.import_file(export, as_name=name),
    ]
    for call in calls:
        with pytest.raises(UsageError):
            call()
    assert name not in saved
    assert snapshot(tmp_path) == before, "an invalid name must not write anything anywhere"


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(reg: Registry, name: str) -> None:
    assert validate_name(name) == name
    reg.save(name, make_tensors(), {})
    assert reg.names() == [name]
    assert (reg.root / "sources" / name).is_dir()


def test_non_string_name() -> None:
    with pytest.raises(UsageError, match="must be a string"):
        validate_name(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_a_valid_name_never_escapes_the_registry(name: str) -> None:
    try:
        validate_name(name)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    sources = Path("/registry/sources")
    path = sources / name
    assert path.parent == sources and path.name == name
    assert os.path.normpath(path) == str(path)
    assert not name.startswith(".") and "/" not in name and "\\" not in name and ".." not in name


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_in_meta_are_refused(reg: Registry, bad: float) -> None:
    with pytest.raises(UsageError) as exc:
        reg.save("a", make_tensors(), {"threshold": bad})
    assert "source 'a'" in one_line(exc) and "NaN or infinity" in str(exc.value)
    assert not reg.root.exists()


@pytest.mark.parametrize(
    "meta",
    [{"t": torch.zeros(1)}, {"t": object()}, {(1, 2): "tuple key"}, ["not", "a", "dict"], {"s": "\ud800"}],
)
def test_unserialisable_meta_is_refused(reg: Registry, meta: object) -> None:
    with pytest.raises(UsageError) as exc:
        reg.save("a", make_tensors(), meta)  # type: ignore[arg-type]
    assert "source 'a'" in one_line(exc)
    assert not reg.root.exists()


@pytest.mark.parametrize(
    "tensors",
    [{"w": [1, 2, 3]}, {1: torch.zeros(1)}, torch.zeros(3), {"s": torch.zeros(3).to_sparse()}],
)
def test_bad_tensors_are_refused(reg: Registry, tensors: object) -> None:
    with pytest.raises(UsageError) as exc:
        reg.save("a", tensors, {})  # type: ignore[arg-type]
    assert "source 'a'" in one_line(exc)
    assert not reg.root.exists()


def test_tensor_size_limit(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_schema, "MAX_TENSOR_BYTES", 100)
    with pytest.raises(UsageError, match="at most 100"):
        reg.save("a", {"w": torch.zeros(100)}, {})


# --------------------------------------------------------------------------- integrity


def rewrite_json(path: Path, change, *, fix_checksum: bool) -> None:
    record = json.loads(path.read_text())
    change(record)
    if fix_checksum:
        record["checksum"] = spec_checksum(record)
    path.write_text(json.dumps(record))


def test_flipped_byte_in_tensors(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    text = one_line(exc)
    assert str(path) in text and "modified or corrupted (sha256 mismatch)" in text
    saved.info("midjourney")  # info reads only the JSON, which is intact


def test_truncated_tensors(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert "truncated or modified" in one_line(exc) and str(path) in str(exc.value)


def test_grown_tensor_file(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(RegistryError, match="truncated or modified"):
        saved.load("midjourney")


@pytest.mark.parametrize("same_size", [True, False])
def test_tensor_file_swapped_for_another_valid_one(saved: Registry, same_size: bool) -> None:
    from safetensors.torch import save as st_save

    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    if same_size:  # same names, dtypes and shapes, other values: the same byte count
        other = {k: (~v if v.dtype == torch.bool else v + 1) for k, v in make_tensors(1).items()}
    else:
        other = {"weight": torch.zeros(10, 10)}
    data = st_save(other)
    if same_size:
        assert len(data) == path.stat().st_size
    path.write_bytes(data)
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert str(path) in one_line(exc)


def test_edited_number_in_json(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.json"
    text = path.read_text()
    assert '"threshold": 0.5' in text
    path.write_text(text.replace('"threshold": 0.5', '"threshold": 0.05'))
    for call in (lambda: saved.info("midjourney"), lambda: saved.load("midjourney")):
        with pytest.raises(RegistryError) as exc:
            call()
        assert one_line(exc).endswith("verifier.json was modified or corrupted (checksum mismatch)")
        assert str(path) in str(exc.value) and "'midjourney'" in str(exc.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.pop("checksum"), "checksum missing"),
        (lambda r: r.update(checksum=r["checksum"].upper()), "checksum mismatch"),
        (lambda r: r.update(extra=1), "checksum mismatch"),
        (lambda r: r.update(name="other"), "checksum mismatch"),
        (lambda r: r["files"]["verifier.safetensors"].update(bytes=1), "checksum mismatch"),
        (lambda r: r.pop("schema_version"), "schema_version is missing"),
        (lambda r: r.update(schema_version="1"), "is not a positive integer"),
        (lambda r: r.update(schema_version=True), "is not a positive integer"),
    ],
)
def test_tampered_json_fields(saved: Registry, change, expected: str) -> None:
    rewrite_json(version_dir(saved, "midjourney") / "verifier.json", change, fix_checksum=False)
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert expected in one_line(exc)


@pytest.mark.parametrize(
    "content",
    [
        lambda data: data[: len(data) // 2],
        lambda data: b"",
        lambda data: b"[]",
        lambda data: b"\x00\xff garbage",
        lambda data: data.replace(b'"threshold": 0.5', b'"threshold": NaN'),
        lambda data: b"[" * 100000 + b"]" * 100000,
        lambda data: b"\xef\xbb\xbf" + data,
    ],
    ids=["truncated", "empty", "array", "binary", "nan", "deep", "bom"],
)
def test_corrupt_json_text(saved: Registry, content) -> None:
    path = version_dir(saved, "midjourney") / "verifier.json"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(RegistryError) as exc:
        saved.info("midjourney")
    assert "verifier.json was modified or corrupted" in one_line(exc)


def test_recomputed_checksum_with_bad_manifest_is_refused(saved: Registry) -> None:
    """The checksum is tamper evidence, not a boundary: the tensor hash still catches a lying manifest."""
    rewrite_json(
        version_dir(saved, "midjourney") / "verifier.json",
        lambda r: r["files"]["verifier.safetensors"].update(sha256="0" * 64),
        fix_checksum=True,
    )
    saved.info("midjourney")
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        saved.load("midjourney")


def test_json_of_another_source(saved: Registry) -> None:
    saved.save("other", make_tensors(), {})
    target = version_dir(saved, "midjourney")
    for member in ("verifier.json", "verifier.safetensors"):
        (target / member).write_bytes((version_dir(saved, "other") / member).read_bytes())
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert "belongs to source 'other'" in one_line(exc)


@pytest.mark.parametrize("content", ["../../etc", "", "v" + "0" * 100, "garbage\nmore"])
def test_corrupt_current(saved: Registry, content: str) -> None:
    (saved.root / "sources" / "midjourney" / "CURRENT").write_text(content)
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert "CURRENT is corrupt" in one_line(exc)
    saved.save("midjourney", make_tensors(4), {}, replace=True)  # replace repairs it
    assert_same_tensors(saved.load("midjourney")[0], make_tensors(4))


def test_missing_version_folder(saved: Registry) -> None:
    import shutil

    folder = version_dir(saved, "midjourney")
    shutil.rmtree(folder)
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    assert "is missing" in one_line(exc) and "'midjourney'" in str(exc.value)


def test_special_file_instead_of_tensors_is_refused(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    path.unlink()
    os.mkfifo(path)  # reading a FIFO would block forever
    with pytest.raises(RegistryError, match="not a regular file"):
        saved.load("midjourney")


def test_newer_schema_is_refused(saved: Registry) -> None:
    path = version_dir(saved, "midjourney") / "verifier.json"
    rewrite_json(path, lambda r: r.update(schema_version=2, new_field={"x": 1}), fix_checksum=True)
    for call in (lambda: saved.info("midjourney"), lambda: saved.load("midjourney")):
        with pytest.raises(RegistryError) as exc:
            call()
        assert one_line(exc) == (
            f"source 'midjourney': {path} was written by a newer occ (schema 2, this occ reads up to 1); "
            "upgrade occ"
        )


def test_newer_registry_schema_is_refused(saved: Registry) -> None:
    (saved.root / "registry.json").write_text(json.dumps({"format": "occ-registry", "schema_version": 7}))
    before = snapshot(saved.root)
    for call in (saved.names, lambda: saved.load("midjourney"), lambda: saved.save("b", make_tensors(), {})):
        with pytest.raises(RegistryError) as exc:
            call()
        assert "newer occ (schema 7, this occ reads up to 1); upgrade occ" in one_line(exc)
    assert snapshot(saved.root) == before


def test_fingerprint_check(saved: Registry) -> None:
    # The store does not read the verifier's keys; the one backbone check is the verifier's, on the
    # metadata the store returns.
    from types import SimpleNamespace

    from occ.verifier import check_backbone

    tensors, meta = saved.load("midjourney")
    assert_same_tensors(tensors, make_tensors(1))
    check_backbone(meta, SimpleNamespace(fingerprint="clip-b16@abc123"), "midjourney")
    with pytest.raises(RegistryError) as exc:
        check_backbone(meta, SimpleNamespace(fingerprint="siglip@fff"), "midjourney")
    assert one_line(exc) == (
        "source 'midjourney' was enrolled on backbone clip-b16@abc123; the backbone in use is siglip@fff; "
        "re-enroll it or select that backbone"
    )
    saved.save("nofp", make_tensors(), {})
    with pytest.raises(RegistryError, match="enrolled on backbone \\(unknown\\); the backbone in use is x"):
        check_backbone(saved.load("nofp")[1], SimpleNamespace(fingerprint="x"), "nofp")


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payloads(tmp_path: Path, marker: Path) -> list[bytes]:
    plain = pickle.dumps({"weight": _Payload(marker)})
    torch_file = tmp_path / "payload.pt"
    torch.save({"weight": _Payload(marker)}, torch_file)
    return [plain, torch_file.read_bytes()]


def test_pickle_payloads_are_live(tmp_path: Path) -> None:
    """Sanity check of the payloads used below: unpickling them really does create the marker."""
    marker = tmp_path / "marker"
    plain, torch_file = pickle_payloads(tmp_path, marker)
    pickle.loads(plain)
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(torch_file), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("which", [0, 1], ids=["pickle", "torch.save"])
@pytest.mark.parametrize("fix_manifest", [False, True])
def test_pickle_in_place_of_tensors_is_not_executed(
    saved: Registry, tmp_path: Path, which: int, fix_manifest: bool
) -> None:
    marker = tmp_path / "PWNED"
    payload = pickle_payloads(tmp_path, marker)[which]
    folder = version_dir(saved, "midjourney")
    (folder / "verifier.safetensors").write_bytes(payload)
    if fix_manifest:  # an attacker who also recomputes the manifest and checksum
        rewrite_json(
            folder / "verifier.json",
            lambda r: r["files"]["verifier.safetensors"].update(
                sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload)
            ),
            fix_checksum=True,
        )
    with pytest.raises(RegistryError) as exc:
        saved.load("midjourney")
    text = one_line(exc)
    assert "verifier.safetensors" in text
    if fix_manifest:
        assert "not a valid safetensors file" in text
    else:
        assert "mismatch" in text or "truncated or modified" in text
    assert not marker.exists()


# --------------------------------------------------------------------------- locking


def test_lock_timeout(saved: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_schema, "LOCK_TIMEOUT", 0.2)
    before = snapshot(saved.root)
    with filelock.FileLock(str(saved.root / ".lock")):
        with pytest.raises(RegistryError) as exc:
            saved.save("midjourney", make_tensors(2), {}, replace=True)
        assert one_line(exc).startswith(f"registry {saved.root} is locked by another process")
        with pytest.raises(RegistryError, match="locked by another process"):
            saved.remove("midjourney")
        # Readers never take the lock.
        assert saved.names() == ["midjourney"]
        assert_same_tensors(saved.load("midjourney")[0], make_tensors(1))
    assert snapshot(saved.root) == before


def test_stale_staging_is_swept_but_live_staging_is_kept(saved: Registry) -> None:
    import fcntl

    staging = saved.root / ".staging"
    dead, live = "a" * 32, "b" * 32
    for ident in (dead, live):
        (staging / ident).mkdir()
        (staging / ident / "verifier.safetensors").write_bytes(b"partial")
        (staging / f"{ident}.lock").touch()
    (staging / "trash-0123456789abcdef").mkdir()
    old_pending = staging / f"{'c' * 32}.pending"
    old_pending.touch()
    os.utime(old_pending, (0, 0))
    young_orphan = staging / ("d" * 32)  # a folder without a lock file: only removed once old
    young_orphan.mkdir()
    fd = os.open(staging / f"{live}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer that is still building
        saved.save("other", make_tensors(), {})
        assert sorted(os.listdir(staging)) == sorted([live, f"{live}.lock", "d" * 32])
    finally:
        os.close(fd)
    os.utime(young_orphan, (0, 0))
    saved.save("third", make_tensors(), {})
    assert os.listdir(staging) == []


def test_orphan_versions_are_swept(saved: Registry) -> None:
    folder = saved.root / "sources" / "midjourney"
    orphan = folder / "v00000000deadbeef"
    orphan.mkdir()
    (orphan / "verifier.json").write_text("{}")
    (folder / ".CURRENT.0011223344556677.tmp").write_text("v00000000deadbeef")
    saved.save("other", make_tensors(), {})
    assert sorted(os.listdir(folder)) == ["CURRENT", saved.info("midjourney").version]


# --------------------------------------------------------------------------- export / import


def test_export_import_round_trip(saved: Registry, tmp_path: Path) -> None:
    path = saved.export("midjourney", tmp_path)
    assert path == tmp_path / "midjourney.occ.zip"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["occ-export.json", "verifier.json", "verifier.safetensors"]
        manifest = json.loads(archive.read("occ-export.json"))
        assert manifest == {"format": "occ-verifier-export", "format_version": 1, "name": "midjourney"}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())

    record = saved.import_file(path, as_name="mj-copy")
    assert record.name == "mj-copy"
    tensors, meta = saved.load("mj-copy")
    original_tensors, original_meta = saved.load("midjourney")
    assert_same_tensors(tensors, original_tensors)
    assert user_meta(meta) == user_meta(original_meta)
    assert meta["files"] == original_meta["files"]
    assert meta["name"] == "mj-copy"

    other = Registry(tmp_path / "elsewhere")
    assert other.import_file(path).name == "midjourney"
    assert_same_tensors(other.load("midjourney")[0], original_tensors)


def test_export_to_a_file_path_and_replace(saved: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "out.zip"
    assert saved.export("midjourney", dest) == dest
    with pytest.raises(UsageError) as exc:
        saved.export("midjourney", dest)
    assert "already exists" in one_line(exc)
    saved.save("midjourney", make_tensors(7), {}, replace=True)
    saved.export("midjourney", dest, replace=True)
    fresh = Registry(tmp_path / "fresh")
    fresh.import_file(dest)
    assert_same_tensors(fresh.load("midjourney")[0], make_tensors(7))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_refuses_a_corrupt_source(saved: Registry, tmp_path: Path) -> None:
    path = version_dir(saved, "midjourney") / "verifier.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        saved.export("midjourney", tmp_path)
    assert list(tmp_path.glob("*.zip")) == []


def test_import_respects_replace(saved: Registry, tmp_path: Path) -> None:
    path = saved.export("midjourney", tmp_path)
    before = snapshot(saved.root)
    with pytest.raises(UsageError, match="already exists .*--replace"):
        saved.import_file(path)
    assert snapshot(saved.root) == before
    saved.import_file(path, replace=True)
    assert saved.names() == ["midjourney"]


def test_import_missing_file(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        reg.import_file(tmp_path / "nope.zip")
    with pytest.raises(UsageError, match="is not a file"):
        reg.import_file(tmp_path)


# Hostile archives. Each builder gets the members of a good export and writes a bad archive.

GOOD = ("occ-export.json", "verifier.json", "verifier.safetensors")


def write_zip(
    path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], method=zipfile.ZIP_STORED
) -> None:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for entry, data in entries:
            archive.writestr(entry, data)


def regular(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def members_with(good: dict[str, bytes], **replacements: bytes) -> list[tuple[str, bytes]]:
    return [(name, replacements.get(name.replace(".", "_").replace("-", "_"), good[name])) for name in GOOD]


def edit_json(data: bytes, change, fix: bool = True) -> bytes:
    record = json.loads(data)
    change(record)
    if fix:
        record["checksum"] = spec_checksum(record)
    return json.dumps(record).encode()


def build_traversal(good, path):
    write_zip(path, [*members_with(good), ("../evil", b"x")])


def build_traversal_replacing(good, path):
    write_zip(path, [("../verifier.json" if n == "verifier.json" else n, d) for n, d in members_with(good)])


def build_absolute(good, path):
    write_zip(path, [*members_with(good), ("/tmp/evil", b"x")])


def build_backslash(good, path):
    write_zip(path, [*members_with(good), ("..\\evil", b"x")])


def build_nul_name(good, path):
    write_zip(path, members_with(good))
    # "verifier\0json": zipfile cuts names at NUL, so this would be read as "verifier".
    path.write_bytes(path.read_bytes().replace(b"verifier.json", b"verifier\x00json"))


def build_symlink(good, path):
    link = zipfile.ZipInfo("verifier.json")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    write_zip(
        path, [(n, d) for n, d in members_with(good) if n != "verifier.json"] + [(link, b"/etc/passwd")]
    )


def build_directory(good, path):
    write_zip(path, [*members_with(good), (zipfile.ZipInfo("verifier.json/"), b"")])


def build_extra(good, path):
    write_zip(path, [*members_with(good), ("README.txt", b"hello")])


def build_missing(good, path):
    write_zip(path, [(n, d) for n, d in members_with(good) if n != "verifier.safetensors"])


def build_duplicate(good, path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_zip(path, [*members_with(good), ("verifier.json", good["verifier.json"])])


def build_too_many(good, path):
    write_zip(path, [*members_with(good)] + [(f"x{i}", b"") for i in range(10)])


def build_declared_too_big(good, path):
    # The tensor member is bigger than the (lowered) limit; the test lowers MAX_TENSOR_BYTES.
    write_zip(path, members_with(good))


def build_bomb_ratio(good, path):
    write_zip(
        path,
        [(n, d) for n, d in members_with(good) if n != "verifier.safetensors"]
        + [("verifier.safetensors", b"\0" * (20 * 2**20))],
        method=zipfile.ZIP_DEFLATED,
    )


def build_lying_size(good, path):
    """The central directory declares fewer bytes than the member really inflates to."""
    entries = [(n, d) for n, d in members_with(good) if n != "verifier.safetensors"]
    entries.append(("verifier.safetensors", good["verifier.safetensors"] + b"\0" * 100000))
    write_zip(path, entries, method=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last central directory entry: verifier.safetensors
    struct.pack_into("<L", data, central + 24, len(good["verifier.safetensors"]))
    path.write_bytes(bytes(data))


def build_bad_checksum(good, path):
    changed = edit_json(good["verifier.json"], lambda r: r.update(threshold=0.01), fix=False)
    write_zip(path, members_with(good, verifier_json=changed))


def build_newer_schema(good, path):
    changed = edit_json(good["verifier.json"], lambda r: r.update(schema_version=2))
    write_zip(path, members_with(good, verifier_json=changed))


def build_newer_export_format(good, path):
    manifest = json.dumps({"format": "occ-verifier-export", "format_version": 2, "name": "midjourney"})
    write_zip(path, members_with(good, occ_export_json=manifest.encode()))


def build_wrong_format(good, path):
    manifest = json.dumps({"format": "something-else", "format_version": 1, "name": "midjourney"})
    write_zip(path, members_with(good, occ_export_json=manifest.encode()))


def build_bad_export_name(good, path):
    manifest = json.dumps({"format": "occ-verifier-export", "format_version": 1, "name": "../../evil"})
    write_zip(path, members_with(good, occ_export_json=manifest.encode()))


def build_name_mismatch(good, path):
    manifest = json.dumps({"format": "occ-verifier-export", "format_version": 1, "name": "other"})
    write_zip(path, members_with(good, occ_export_json=manifest.encode()))


def build_flipped_tensor(good, path):
    data = bytearray(good["verifier.safetensors"])
    data[-1] ^= 0xFF
    write_zip(path, members_with(good, verifier_safetensors=bytes(data)))


def build_pickle(good, path):
    payload = pickle.dumps({"w": _Payload(path.parent / "PWNED")})
    meta = edit_json(
        good["verifier.json"],
        lambda r: r["files"]["verifier.safetensors"].update(
            sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload)
        ),
    )
    write_zip(path, members_with(good, verifier_json=meta, verifier_safetensors=payload))


def build_not_zip(good, path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)


def build_empty(good, path):
    path.write_bytes(b"")


def build_truncated(good, path):
    write_zip(path, members_with(good))
    path.write_bytes(path.read_bytes()[:-30])


def build_truncated_middle(good, path):
    write_zip(path, members_with(good))
    data = path.read_bytes()
    cut = len(data) // 2
    path.write_bytes(data[:cut] + data[cut + 50 :])


def build_encrypted_flag(good, path):
    write_zip(path, members_with(good))
    data = bytearray(path.read_bytes())
    start = 0
    while (index := data.find(b"PK\x01\x02", start)) >= 0:  # set "encrypted" in every central entry
        data[index + 8] |= 0x01
        start = index + 4
    path.write_bytes(bytes(data))


HOSTILE = {
    "traversal-member": (build_traversal, "unsafe name"),
    "traversal-replacing": (build_traversal_replacing, "unsafe name"),
    "absolute-member": (build_absolute, "unsafe name"),
    "backslash-member": (build_backslash, "unsafe name"),
    "nul-in-name": (build_nul_name, "unsafe name"),
    "symlink-member": (build_symlink, "symbolic link"),
    "directory-member": (build_directory, "not a regular file"),
    "extra-member": (build_extra, "unexpected member 'README.txt'"),
    "missing-member": (build_missing, "member 'verifier.safetensors' is missing"),
    "duplicate-member": (build_duplicate, "appears twice"),
    "too-many-members": (build_too_many, "members"),
    "declared-too-big": (build_declared_too_big, "the limit is 64"),
    "zip-bomb-ratio": (build_bomb_ratio, "zip bomb"),
    "lying-size": (build_lying_size, "member 'verifier.safetensors'"),
    "bad-checksum": (build_bad_checksum, "verifier.json was modified or corrupted (checksum mismatch)"),
    "newer-schema": (build_newer_schema, "newer occ (schema 2, this occ reads up to 1); upgrade occ"),
    "newer-export-format": (build_newer_export_format, "newer occ (export format 2"),
    "wrong-format": (build_wrong_format, "not an occ export"),
    "bad-export-name": (build_bad_export_name, "invalid source"),
    "name-mismatch": (build_name_mismatch, "belongs to source 'midjourney'"),
    "flipped-tensor": (build_flipped_tensor, "sha256 mismatch"),
    "pickle-payload": (build_pickle, "not a valid safetensors file"),
    "not-zip": (build_not_zip, "not an occ export"),
    "empty-file": (build_empty, "not an occ export"),
    "truncated-zip": (build_truncated, "not an occ export"),
    "truncated-middle": (build_truncated_middle, "occ export"),
    "encrypted": (build_encrypted_flag, "encrypted"),
}


@pytest.fixture
def good_members(tmp_path: Path) -> dict[str, bytes]:
    source = Registry(tmp_path / "source-registry")
    source.save("midjourney", make_tensors(1), META)
    with zipfile.ZipFile(source.export("midjourney", tmp_path)) as archive:
        return {name: archive.read(name) for name in GOOD}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("registry_exists", [True, False], ids=["populated", "absent"])
def test_hostile_archive_writes_nothing(
    case: str, registry_exists: bool, good_members, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, expected = HOSTILE[case]
    reg = Registry(tmp_path / "target")
    if registry_exists:
        reg.save("keep", make_tensors(2), {"a": 1})
    if case == "declared-too-big":
        monkeypatch.setattr(registry_schema, "MAX_TENSOR_BYTES", 64)
    archive = tmp_path / "hostile.zip"
    build(good_members, archive)
    before = snapshot(reg.root)
    for kwargs in ({}, {"as_name": "renamed"}, {"as_name": "keep", "replace": True}):
        with pytest.raises(RegistryError) as exc:
            reg.import_file(archive, **kwargs)
        text = one_line(exc)
        assert expected in text, text
        assert str(archive) in text
        assert snapshot(reg.root) == before
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_good_members_fixture_imports(good_members, tmp_path: Path) -> None:
    """The hostile cases start from a good archive; rebuilt unchanged, it must import."""
    archive = tmp_path / "rebuilt.zip"
    write_zip(archive, members_with(good_members), method=zipfile.ZIP_DEFLATED)
    reg = Registry(tmp_path / "target")
    reg.import_file(archive)
    assert_same_tensors(reg.load("midjourney")[0], make_tensors(1))


def test_zip64_end_record_is_refused(good_members, tmp_path: Path) -> None:
    archive = tmp_path / "z64end.zip"
    write_zip(archive, members_with(good_members))
    data = archive.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    locator = b"PK\x06\x07" + struct.pack("<LQL", 0, 0, 1)  # a zip64 end-record locator before the end record
    archive.write_bytes(data[:eocd] + locator + data[eocd:])
    reg = Registry(tmp_path / "target")
    with pytest.raises(RegistryError, match="ZIP64"):
        reg.import_file(archive)
    assert not reg.root.exists()


def test_export_archive_bytes_match_registry_files(saved: Registry, tmp_path: Path) -> None:
    path = saved.export("midjourney", tmp_path)
    folder = version_dir(saved, "midjourney")
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        for name in ("verifier.json", "verifier.safetensors"):
            assert archive.read(name) == (folder / name).read_bytes()
