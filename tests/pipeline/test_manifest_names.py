"""Listed names, per entry: every file of a folder is in the manifest under its exact name, or counted.

Generated names (hypothesis) hold control characters, whitespace at either end, unicode and bytes that are
not UTF-8; the listing never fails for them and never alters one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection_engine import layout
from detection_pipeline.config import RunConfig
from detection_pipeline.manifest import ManifestStats, build_manifest

EXTENSIONS = (b".jpg", b".PNG", b".webp", b".txt", b"", b".jpg ", b" .jpeg")
_stems = st.one_of(
    st.binary(min_size=1, max_size=40),  # any bytes: not UTF-8, control characters
    st.text(min_size=1, max_size=30).map(os.fsencode),  # unicode, whitespace at either end
    st.sampled_from([b" a", b"a ", b"\ta", b"a\n", b"#x", b"..", b".", b"~", b"\xff\xfe", b"caf\xc3\xa9"]),
)
_names = st.builds(lambda stem, ext: stem + ext, _stems, st.sampled_from(EXTENSIONS)).filter(
    lambda name: b"/" not in name and b"\x00" not in name and name not in (b".", b"..") and len(name) <= 255
)


def _build(folder: Path, out: Path) -> tuple[ManifestStats, list[str]]:
    config = RunConfig(input_uri=str(folder), output_uri=str(out), warehouse=f"duckdb://{out}/w.duckdb")
    stats = build_manifest(config, layout.run_prefix(config.output_uri, "r1"))
    return stats, pq.read_table(stats.manifest_uri).column("image_uri").to_pylist()


@pytest.mark.timeout(240)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_names, min_size=1, max_size=12, unique=True), st.booleans())
def test_every_listed_file_is_in_the_manifest_by_its_exact_name_or_counted(names, nested):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in" / ("sub dir" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for name in names:
            path = os.path.join(os.fsencode(folder), name)
            with open(path, "wb") as fh:
                fh.write(b"x")
            files.append(os.fsdecode(path))  # the name as Python lists it (surrogate escapes for non-UTF-8)

        stats, manifest = _build(Path(tmp) / "in", Path(tmp) / "out")

        assert set(manifest) <= set(files)  # exact names only: nothing trimmed, rewritten or invented
        assert len(manifest) + stats.rejected + stats.skipped_not_image == len(files)
        assert stats.unique == len(manifest) and stats.duplicates == 0
        assert len(stats.rejected_examples) == min(stats.rejected, 5)


def test_names_that_cannot_be_used_are_counted_with_examples_and_the_rest_are_kept(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    kept = [folder / "a.jpg", folder / "b.jpg ", folder / " c.png"]  # b.jpg<space> is no .jpg: not an image
    for path in kept:
        path.write_bytes(b"x")
    for raw in (b"tab\there.jpg", b"new\nline.jpg", b"latin1-\xe9.jpg"):
        with open(os.path.join(os.fsencode(folder), raw), "wb") as fh:
            fh.write(b"x")

    stats, manifest = _build(folder, tmp_path / "out")

    assert manifest == [str(folder / " c.png"), str(folder / "a.jpg")]
    assert stats.rejected == 3 and stats.skipped_not_image == 1
    assert sorted(stats.rejected_examples) == sorted(
        repr(str(folder / n)) for n in ("tab\there.jpg", "new\nline.jpg", os.fsdecode(b"latin1-\xe9.jpg"))
    )


@pytest.mark.timeout(60)
def test_content_dedup_never_blocks_on_a_fifo_in_the_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"same")
    (folder / "b.jpg").write_bytes(b"same")
    os.mkfifo(folder / "pipe.jpg")  # no writer: a plain read would wait forever
    config = RunConfig(
        input_uri=str(folder),
        output_uri=str(tmp_path / "out"),
        warehouse=f"duckdb://{tmp_path}/w.duckdb",
        dedup_mode="content",
    )
    stats = build_manifest(config, layout.run_prefix(config.output_uri, "r1"))
    kept = pq.read_table(stats.manifest_uri).column("image_uri").to_pylist()
    assert kept == [str(folder / "a.jpg"), str(folder / "pipe.jpg")]  # the FIFO is kept: its row says why
