"""``occ inspect`` and ``--provenance`` on verify / attribute (issue 15), on real files: C2PA manifests
signed in the test (c2pa-python), AUTOMATIC1111 text chunks, XMP; scores on the tiny CLIP of conftest."""

from __future__ import annotations

from pathlib import Path

import clikit
import pytest
from clikit import check_attribute_row, check_error_row, check_verify_row, invoke
from provenancekit import A1111_PARAMETERS, c2pa_sign, created_manifest, make_chain, png_with, text_chunk, xmp_packet

from occ.testing.imagegen import encode, pattern_image

PROVENANCE_KEYS = {"level", "items", "disagreement"}


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_clip_dir) -> clikit.World:
    return clikit.world(tmp_path_factory, tiny_clip_dir)


@pytest.fixture(scope="module")
def chain():
    return make_chain()


def with_chunks(png: Path, dest: Path, *chunks: bytes) -> Path:
    """A copy of ``png`` with text chunks inserted after IHDR: the same pixels, more metadata."""
    data = png.read_bytes()
    dest.write_bytes(data[:33] + b"".join(chunks) + data[33:])
    return dest


def squash(table: str) -> str:
    """A rich table's text without borders and whitespace: cells that wrap read on."""
    return "".join(ch for ch in table if ch not in "│┃ \n")


def a1111(model: str) -> bytes:
    return text_chunk("parameters", A1111_PARAMETERS.replace("sd_xl_base_1.0", model))


# -- occ inspect -----------------------------------------------------------------------------------------


def test_inspect_json_table_and_bad_files(tmp_path, chain, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "1_signed.png").write_bytes(c2pa_sign(encode(pattern_image(), "PNG"), "image/png", chain))
    (folder / "2_a1111.png").write_bytes(png_with(text_chunk("parameters", A1111_PARAMETERS)))
    (folder / "3_plain.png").write_bytes(encode(pattern_image(), "PNG"))
    (folder / "4_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    (folder / "5_xmp.jpg").write_bytes(encode(pattern_image(), "JPEG", xmp=xmp_packet("trainedAlgorithmicMedia")))
    (folder / "6_text.png").write_bytes(b"not an image at all")
    run = invoke("inspect", folder, "--json")
    assert run.code == 1, run  # one input could not be read
    rows = run.json()
    by_name = {Path(r["path"]).name: r for r in rows}
    assert list(by_name) == ["1_signed.png", "2_a1111.png", "3_plain.png", "4_broken.png", "5_xmp.jpg", "6_text.png"]
    check_error_row(by_name["6_text.png"])
    assert "not an image" in by_name["6_text.png"]["error"]
    signed = by_name["1_signed.png"]["provenance"]
    assert signed["level"] == "signed-valid"
    assert signed["items"][0]["signer"] == "Test Signer (Test Org)" and signed["items"][0]["trusted"] is None
    assert by_name["2_a1111.png"]["provenance"]["items"][0]["claims"]["model"] == "sd_xl_base_1.0"
    assert by_name["3_plain.png"]["provenance"] == {"level": "none", "items": []}
    assert by_name["4_broken.png"]["provenance"]["level"] == "unreadable"  # metadata broken: reported, not fatal
    assert by_name["5_xmp.jpg"]["provenance"]["items"][0]["claims"]["source_kind"] == "generated"

    monkeypatch.chdir(folder)  # short names: the table's image column does not wrap into the others
    run = invoke("inspect", "1_signed.png", "3_plain.png")
    assert run.code == 0, run
    text = squash(run.stdout)
    assert "c2pasigned-valid:generatorDALL-E3;softwareChatGPT1.0" in text
    assert "signerTestSigner(TestOrg)(notcheckedagainstatrustlist)" in text and "noprovenancemetadata" in text


def test_inspect_trust_list(tmp_path, chain):
    image = tmp_path / "s.jpg"
    image.write_bytes(c2pa_sign(encode(pattern_image(), "JPEG"), "image/jpeg", chain))
    ours, theirs, junk = tmp_path / "ours.pem", tmp_path / "theirs.pem", tmp_path / "junk.pem"
    ours.write_bytes(chain.root_pem)
    theirs.write_bytes(make_chain(org="Other").root_pem)
    junk.write_text("hello")
    item = invoke("inspect", image, "--json", "--trust-list", ours).json()[0]["provenance"]["items"][0]
    assert (item["trust"], item["trusted"]) == ("signed-valid", True)
    item = invoke("inspect", image, "--json", "--trust-list", theirs).json()[0]["provenance"]["items"][0]
    assert (item["trust"], item["trusted"]) == ("signed-invalid", False)
    assert item["problems"][0].startswith("signingCredential.untrusted")
    run = invoke("inspect", image, "--trust-list", junk)
    assert run.code == 2 and run.err_lines == [f"error: {junk}: no PEM certificate found (a trust list is one or "
                                               "more '-----BEGIN CERTIFICATE-----' blocks)"], run


# -- --provenance on verify and attribute ----------------------------------------------------------------


@pytest.fixture(scope="module")
def named(w, tmp_path_factory) -> Path:
    """A registry with sources 'alpha' (w's 'a') and 'beta' (w's 'b'): names long enough to match
    metadata by."""
    root = tmp_path_factory.mktemp("named")
    reg = root / "reg"
    for old, new in (("a", "alpha"), ("b", "beta")):
        assert invoke("export", old, root / f"{old}.occ", "--registry", w.reg_ab).code == 0
        assert invoke("import", root / f"{old}.occ", "--as", new, "--registry", reg).code == 0
    return reg


def test_verify_provenance_never_changes_the_verdict(w, named, tmp_path):
    """Files of alpha's family (accepted) and beta's (rejected), each plain, naming alpha's generator and
    naming beta's: the same pixels give the same verdict, and the evidence disagrees where it should."""
    files = []
    for image in (w.good(0), sorted(w.b_test.iterdir())[0]):
        files += [image, with_chunks(image, tmp_path / f"alpha_{image.name}", a1111("alpha_v2")),
                  with_chunks(image, tmp_path / f"beta_{image.name}", a1111("beta-xl"))]
    base = ["--registry", named, "--backbone", w.backbone, "--json"]
    plain = invoke("verify", *files, "--source", "alpha", *base)
    assert plain.code == 0, plain
    for row in plain.json():
        check_verify_row(row, "alpha")
    rows = invoke("verify", *files, "--source", "alpha", "--provenance", *base).json()
    found = [row.pop("provenance") for row in rows]
    assert rows == plain.json()  # same scores, thresholds, decisions
    assert all(set(f) == PROVENANCE_KEYS for f in found)
    assert [r["accepted"] for r in rows] == [True] * 3 + [False] * 3
    assert [f["level"] for f in found] == ["none", "unsigned-claim", "unsigned-claim"] * 2
    said = [f["disagreement"] for f in found]
    # accepted as alpha: naming alpha agrees, naming beta's generator disagrees
    assert said[0] is None and said[1] is None and "names generator" in said[2] and "pixels say 'alpha'" in said[2]
    # rejected: naming alpha disagrees, naming beta says nothing against a rejection
    assert said[3] is None and "matches source 'alpha'; pixels say none" in said[4] and said[5] is None


def test_attribute_provenance_flags_disagreement_in_json_and_table(w, named, tmp_path, monkeypatch):
    good = w.good(0)
    base = ["--registry", named, "--backbone", w.backbone]
    plain = invoke("attribute", good, "--json", *base).json()[0]
    check_attribute_row(plain, ["alpha", "beta"])
    pixel = plain["source"]
    other = "beta" if pixel == "alpha" else "alpha"
    claimed = with_chunks(good, tmp_path / "claimed.png", a1111(f"{other}_v1"))
    row = invoke("attribute", claimed, "--json", "--provenance", *base).json()[0]
    evidence = row.pop("provenance")
    assert {k: v for k, v in row.items() if k != "path"} == {k: v for k, v in plain.items() if k != "path"}
    said = "'" + pixel + "'" if pixel else "none of the enrolled sources"
    assert evidence["disagreement"].endswith(f"matches source '{other}'; pixels say {said}")

    monkeypatch.chdir(tmp_path)
    run = invoke("attribute", good, claimed.name, "--provenance", *base)
    assert run.code == 0, run
    assert "provenance" in run.stdout and "(disagrees)" in squash(run.stdout)
    assert f"disagreement: {claimed.name}: png-text (unsigned-claim) names" in " ".join(run.stdout.split())
    assert "provenance" not in invoke("attribute", good, *base).stdout  # no column without the option


def test_trust_list_needs_provenance(w, named, tmp_path, chain):
    pem = tmp_path / "ours.pem"
    pem.write_bytes(chain.root_pem)
    run = invoke("verify", w.good(0), "--source", "alpha", "--trust-list", pem, "--registry", named)
    assert run.code == 2 and run.err_lines == ["error: --trust-list applies to the provenance evidence: add "
                                               "--provenance"], run
    signed = tmp_path / "signed.png"
    signed.write_bytes(c2pa_sign(w.good(0).read_bytes(), "image/png", chain, created_manifest("beta")))
    base = ["--registry", named, "--backbone", w.backbone, "--json", "--provenance"]
    item = invoke("attribute", signed, *base).json()[0]["provenance"]["items"][0]
    assert (item["trust"], item["trusted"]) == ("signed-valid", None)
    item = invoke("attribute", signed, *base, "--trust-list", pem).json()[0]["provenance"]["items"][0]
    assert (item["trust"], item["trusted"]) == ("signed-valid", True)
    row = invoke("verify", signed, "--source", "alpha", *base, "--trust-list", pem).json()[0]
    assert (row["provenance"]["items"][0]["trusted"], row["provenance"]["items"][0]["claims"]["generator"]) == (True,
                                                                                                            "beta")
