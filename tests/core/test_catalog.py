"""The catalog: valid data, clear errors for bad entries, local status, and hub metadata from a fake hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.models import catalog
from app.core.models.gguf import read_remote_header
from app.core.planning.planner import SOURCE_CATALOG, SOURCE_HEADER
from app.core.planning.shapes import shape_for
from app.core.storage import paths
from models_manifest import LAYOUT_PER_EXPERT, CatalogError, default_path, load_catalog
from quant.fakehub import sha256_of

GIB = 1024**3
LEVELS = {"Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0"}


def test_catalog_covers_both_mixtrals_instruct_and_base() -> None:
    models = {m.id: m for m in load_catalog()}
    for model_id in ("mixtral-8x7b-instruct", "mixtral-8x7b", "mixtral-8x22b-instruct", "mixtral-8x22b", "demo"):
        assert model_id in models
    assert models["mixtral-8x7b-instruct"].instruct and not models["mixtral-8x7b"].instruct
    assert models["mixtral-8x7b-instruct"].tokenizer == "v1" and models["mixtral-8x22b-instruct"].tokenizer == "v3"
    assert {q.quant for q in models["mixtral-8x7b-instruct-thebloke"].quants} == LEVELS
    for model in models.values():
        assert all(q.note for q in model.quants)


def test_8x22b_files_come_in_parts() -> None:
    model = {m.id: m for m in load_catalog()}["mixtral-8x22b-instruct"]
    for quant in model.quants:
        assert quant.is_split
        names = [f.name for f in quant.files]
        assert names[0].endswith(f"-00001-of-{len(names):05d}.gguf")


def test_public_figure_for_8x7b_q4_k_m() -> None:
    model = {m.id: m for m in load_catalog()}["mixtral-8x7b-instruct-thebloke"]
    quant = model.quant("Q4_K_M")
    assert quant.size_exact and round(quant.size / GIB, 2) == pytest.approx(24.62, abs=0.01)
    assert model.tensor_layout == LAYOUT_PER_EXPERT and not model.loadable


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["models"][0].pop("architecture"), "'mixtral-8x7b-instruct' is malformed"),
        (lambda d: d["models"][1].update(tokenizer="v9"), "'mixtral-8x7b' has tokenizer 'v9'"),
        (lambda d: d["models"][2]["quants"][0]["files"][0].update(sha256="xyz"), "malformed sha256"),
        (lambda d: d["models"][0].update(quants=[]), "lists no files"),
        (lambda d: d["models"].append(dict(d["models"][0])), "more than once"),
        (lambda d: d.update(version=99), "not a version-1 catalog"),
    ],
)
def test_bad_catalog_entries_are_named(tmp_path: Path, mutate, message: str) -> None:
    data = json.loads(default_path().read_text(encoding="utf-8"))
    mutate(data)
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CatalogError, match=message):
        load_catalog(bad)


def test_unreadable_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(bad)


def test_demo_entry_is_installed_and_others_are_not() -> None:
    entries = {e.id: e for e in catalog.entries()}
    assert entries["demo:Q4_1"].installed
    assert not entries["mixtral-8x7b-instruct:Q4_K_M"].installed


def test_a_downloaded_file_shows_as_installed_and_is_planned_from_its_header(tiny_v1: dict[str, Path]) -> None:
    item = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    target = paths.models_dir() / "mixtral-8x7b-instruct" / item.quant.files[0].name
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_v1["Q2_K"])
    item = catalog.entry("mixtral-8x7b-instruct", "Q2_K")
    assert item.installed and item.first_path == target
    assert shape_for(item).source == SOURCE_HEADER
    assert shape_for(catalog.entry("mixtral-8x7b-instruct", "Q4_K_M")).source == SOURCE_CATALOG


def test_hub_metadata_fills_sizes_and_hashes(fake_hub, tiny_v1: dict[str, Path]) -> None:
    model = catalog.find_model("mixtral-8x7b-instruct")
    for quant in model.quants:
        fake_hub.add(model.repo, tiny_v1["Q4_0"], quant.files[0].name)
    assert not model.quant("Q4_K_M").size_exact
    assert catalog.refresh_from_hub(model) == len(model.quants)
    refreshed = catalog.find_model("mixtral-8x7b-instruct").quant("Q4_K_M")
    assert refreshed.size_exact and refreshed.size == tiny_v1["Q4_0"].stat().st_size
    assert refreshed.files[0].sha256 == sha256_of(tiny_v1["Q4_0"])


def test_a_refresh_pins_downloads_to_the_commit_its_figures_describe(fake_hub, tiny_v1: dict[str, Path]) -> None:
    from app.core.models.downloads import Downloader, spec_for_catalog_entry
    from quant.fakehub import COMMIT

    model = catalog.find_model("mixtral-8x7b-instruct")
    assert model.revision is None  # the catalog itself pins nothing for this repo
    for quant in model.quants:
        fake_hub.add(model.repo, tiny_v1["Q4_0"], quant.files[0].name)
    catalog.refresh_from_hub(model)
    assert catalog.find_model("mixtral-8x7b-instruct").revision == COMMIT
    spec = spec_for_catalog_entry(catalog.entry("mixtral-8x7b-instruct", "Q2_K"))
    assert {f.revision for f in spec.files} == {COMMIT}
    Downloader(spec).run()
    gets = [r for r in fake_hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert gets and all(f"/resolve/{COMMIT}/" in r for r in gets)


def test_hub_unreachable_is_a_clear_error_not_a_crash() -> None:
    with pytest.raises(Exception, match="Could not read"):
        catalog.refresh_from_hub(catalog.find_model("mixtral-8x7b-instruct"))


def test_remote_header_reads_only_the_header(fake_hub, wide_model: Path) -> None:
    fake_hub.add("someone/wide", wide_model)
    header = read_remote_header("someone/wide", wide_model.name, file_size=wide_model.stat().st_size)
    assert header.arch_int("expert_count") == 8 and len(header.tensors) == header.tensor_count
    served = fake_hub.bytes_served[wide_model.name]
    assert 0 < served <= 4 * 1024 * 1024 < wide_model.stat().st_size  # a few MB of a 1.7 GB file


def test_remote_plan_for_a_split_model_is_exact_and_cached(fake_hub, tmp_path: Path) -> None:
    from quant.tiny import TinyMixtralSpec, write_f16

    model = catalog.find_model("mixtral-8x22b-instruct")
    names = [f.name for f in model.quant("Q4_K_M").files]
    tensors = 2 + 2 * 10 + 1  # embeddings, 2 layers of 10, output norm
    write_f16(
        TinyMixtralSpec(tokenizer="v3", n_layer=2), tmp_path / "parts.gguf", split_max_tensors=-(-tensors // len(names))
    )
    parts = sorted(tmp_path.glob("parts-*.gguf"))
    assert len(parts) == len(names)
    for name, part in zip(names, parts, strict=True):
        fake_hub.add(model.repo, part, name)
    item = catalog.entry(model.id, "Q4_K_M")
    shape = shape_for(item, remote=True)
    assert shape.source == SOURCE_HEADER and (shape.n_expert, shape.n_layer, shape.n_vocab) == (8, 2, 32768)
    assert shape.weight_bytes == sum(p.stat().st_size for p in parts) - sum(
        read_remote_header(model.repo, n).data_offset for n in names
    )
    fake_hub.stop()  # offline from here: the cached header answers
    assert shape_for(item).layer_bytes == shape.layer_bytes
