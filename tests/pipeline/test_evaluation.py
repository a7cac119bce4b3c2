"""COCO box mAP of a run: exact values for hand-built cases, matching rules, and the files it reads."""

from __future__ import annotations

import datetime as dt
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detection_engine import catalog, layout, schema
from detection_pipeline import evaluation
from detection_pipeline.evaluation import (
    EvaluationError,
    GroundTruthError,
    evaluate_run,
    load_ground_truth,
    map_categories,
    match_images,
    validate_ground_truth,
)

PERSON, DOG = 1, 18  # torchvision COCO_V1 label ids, which are COCO's category ids
BOX = {1: [10.0, 20.0, 100.0, 100.0], 2: [200.0, 100.0, 100.0, 100.0]}  # x, y, w, h; area 10^4 = "large"


def coco_gt(categories=((PERSON, "person"), (DOG, "dog")), extra_images=()) -> dict:
    """Image 1 has a person, image 2 a dog (the first two categories), each one 100x100 box;
    `extra_images` have no annotations."""
    (person_id, _), (dog_id, _) = categories[:2]
    images = [{"id": 1, "file_name": "val/1.jpg"}, {"id": 2, "file_name": "val/2.jpg"}]
    images += [{"id": i, "file_name": f"val/{i}.jpg"} for i in extra_images]
    return validate_ground_truth(
        {
            "images": [{**image, "width": 640, "height": 480} for image in images],
            "annotations": [
                {"image_id": 1, "category_id": person_id, "bbox": BOX[1]},
                {"image_id": 2, "category_id": dog_id, "bbox": BOX[2]},
            ],
            "categories": [{"id": cid, "name": name} for cid, name in categories],
        }
    )


def det(label_id: int, box_xywh, score: float = 0.9, dx: float = 0.0) -> dict:
    """A detection row entry (x1, y1, x2, y2), shifted right by `dx` times the box width."""
    x, y, w, h = box_xywh
    x += dx * w
    return {"label_id": label_id, "label": None, "score": score, "box": [x, y, x + w, y + h]}


def row(uri: str, detections=(), status: str = schema.STATUS_OK) -> dict:
    return {"image_uri": uri, "status": status, "detections": list(detections)}


def perfect_rows(dx: float = 0.0) -> list[dict]:
    return [
        row("gs://bucket/coco/val/1.jpg", [det(PERSON, BOX[1], dx=dx)]),
        row("gs://bucket/coco/val/2.jpg", [det(DOG, BOX[2], dx=dx)]),
    ]


# -- exact metric values ---------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    got = evaluate_run(perfect_rows(), coco_gt())
    assert got["coco_map"] == pytest.approx(1.0)
    assert got["coco_map50"] == pytest.approx(1.0)
    assert got["coco_map75"] == pytest.approx(1.0)
    assert got["coco_map_large"] == pytest.approx(1.0)
    assert got["coco_map_small"] is None and got["coco_map_medium"] is None  # no such objects: null, not -1
    assert (got["coco_ar1"], got["coco_ar10"], got["coco_ar100"]) == pytest.approx((1.0, 1.0, 1.0))
    assert got["eval_images"] == 2 and got["detections_scored"] == 2


def test_a_box_shifted_by_a_tenth_of_its_width_passes_iou_up_to_0_80():
    # IoU = 0.9 / 1.1 = 0.818: a hit at thresholds 0.50, 0.55, ..., 0.80 (7 of 10), a miss at 0.85+.
    got = evaluate_run(perfect_rows(dx=0.1), coco_gt())
    assert got["coco_map50"] == pytest.approx(1.0)
    assert got["coco_map75"] == pytest.approx(1.0)
    assert got["coco_map"] == pytest.approx(0.7)


def test_a_box_shifted_by_half_its_width_misses_everywhere():
    # IoU = 0.5 / 1.5 = 1/3, below every threshold.
    got = evaluate_run(perfect_rows(dx=0.5), coco_gt())
    assert got["coco_map50"] == pytest.approx(0.0)
    assert got["coco_map"] == pytest.approx(0.0)
    assert got["coco_ar100"] == pytest.approx(0.0)


def test_an_annotated_image_without_detections_is_a_miss():
    rows = [row("gs://bucket/coco/val/1.jpg", [det(PERSON, BOX[1])]), row("gs://bucket/coco/val/2.jpg")]
    got = evaluate_run(rows, coco_gt())
    assert got["coco_map"] == pytest.approx(0.5)  # person 1.0, dog 0.0
    assert got["eval_images"] == 2 and got["failed_images"] == 0


def test_an_error_row_of_an_annotated_image_is_a_miss_and_counted():
    rows = perfect_rows()
    rows[1] = row(rows[1]["image_uri"], status=schema.STATUS_ERROR)
    got = evaluate_run(rows, coco_gt())
    assert got["coco_map"] == pytest.approx(0.5)
    assert got["failed_images"] == 1


def test_detections_on_an_image_annotated_with_no_objects_are_false_positives():
    # Person: a false positive at 0.95 ranks above the true positive at 0.9, so precision is 1/2 at
    # recall 1 and the interpolated AP is 0.5; dog stays 1.0; the mean is 0.75 at every IoU.
    rows = [*perfect_rows(), row("gs://bucket/coco/val/3.jpg", [det(PERSON, BOX[1], score=0.95)])]
    got = evaluate_run(rows, coco_gt(extra_images=[3]))
    assert got["coco_map"] == pytest.approx(0.75)
    assert got["coco_map50"] == pytest.approx(0.75)
    assert got["eval_images"] == 3


def test_result_images_missing_from_the_annotation_file_are_left_out_and_counted():
    rows = [*perfect_rows(), row("gs://bucket/other/9.jpg", [det(PERSON, BOX[1], score=0.99)])]
    got = evaluate_run(rows, coco_gt())
    assert got["coco_map"] == pytest.approx(1.0)
    assert got["eval_images"] == 2 and got["unannotated_images"] == 1


def test_a_run_over_a_subset_is_scored_on_that_subset():
    got = evaluate_run(perfect_rows()[:1], coco_gt())
    assert got["coco_map"] == pytest.approx(1.0)  # dog has no ground truth among the scored images
    assert got["eval_images"] == 1 and got["missing_images"] == 1


def test_the_score_threshold_drops_low_confidence_boxes():
    rows = [
        row("gs://bucket/coco/val/1.jpg", [det(PERSON, BOX[1], score=0.3)]),
        row("gs://bucket/coco/val/2.jpg", [det(DOG, BOX[2], score=0.9)]),
    ]
    assert evaluate_run(rows, coco_gt(), score_threshold=0.05)["coco_map"] == pytest.approx(1.0)
    assert evaluate_run(rows, coco_gt(), score_threshold=0.5)["coco_map"] == pytest.approx(0.5)


def test_a_run_that_detected_nothing_scores_zero():
    rows = [row("gs://bucket/coco/val/1.jpg"), row("gs://bucket/coco/val/2.jpg")]
    got = evaluate_run(rows, coco_gt())
    assert got["coco_map"] == pytest.approx(0.0) and got["detections_scored"] == 0


def test_a_pyarrow_table_scores_like_the_rows():
    table = pa.Table.from_pylist(perfect_rows(dx=0.1), schema=evaluation._results_schema())
    assert evaluate_run(table, coco_gt())["coco_map"] == pytest.approx(0.7)


def test_results_that_match_no_annotated_image_are_an_error():
    with pytest.raises(EvaluationError, match="none of the run's 1 images matches a file_name"):
        evaluate_run([row("/data/elsewhere/x.jpg")], coco_gt())


def test_repeated_result_rows_are_an_error():
    rows = perfect_rows()
    with pytest.raises(EvaluationError, match="1 repeated image URIs"):
        evaluate_run([*rows, rows[0]], coco_gt())


# -- categories ----------------------------------------------------------------------------------


def test_the_label_set_is_torchvisions_for_every_coco_v1_detector():
    """The torch-free copy (catalog) must equal torchvision's own list and every model's weights metadata."""
    from torchvision.models import get_model_weights
    from torchvision.models._meta import _COCO_CATEGORIES

    assert list(evaluation.COCO_V1_CATEGORIES) == _COCO_CATEGORIES
    for name in catalog.MODELS:
        assert get_model_weights(name).COCO_V1.meta["categories"] == _COCO_CATEGORIES, name


def test_official_coco_ids_map_to_themselves():
    categories = [
        {"id": i, "name": n} for i, n in enumerate(evaluation.COCO_V1_CATEGORIES) if i and n != "N/A"
    ]
    mapped = map_categories({"categories": categories})
    assert mapped.by == "name" and len(mapped.label_to_category) == 80
    assert all(label == category for label, category in mapped.label_to_category.items())


def test_a_renumbered_file_is_mapped_by_name():
    gt = coco_gt(categories=((1, "Person"), (2, "dog")))  # contiguous ids: dog is 2, torchvision's dog is 18
    assert map_categories(gt).label_to_category == {PERSON: 1, DOG: 2}
    assert evaluate_run(perfect_rows(), gt)["coco_map"] == pytest.approx(1.0)
    wrong = [row("gs://bucket/coco/val/2.jpg", [det(2, BOX[2])])]  # torchvision 2 is bicycle, not dog
    got = evaluate_run(wrong, gt)
    assert got["coco_map"] == pytest.approx(0.0) and got["detections_unmapped"] == 1


def test_a_file_of_other_classes_is_mapped_by_id():
    gt = coco_gt(categories=((1, "person"), (2, "dog")))
    gt["categories"] = [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}]
    mapped = map_categories(gt)
    assert (mapped.by, mapped.label_to_category) == ("id", {1: 1, 2: 2})


def test_annotation_classes_no_label_maps_to_are_reported():
    gt = coco_gt(categories=((1, "person"), (2, "dog"), (3, "unicorn")))
    assert map_categories(gt).unmatched == ("unicorn",)


# -- images --------------------------------------------------------------------------------------


def _gt_with(*file_names: str) -> dict:
    images = [{"id": i + 1, "file_name": name} for i, name in enumerate(file_names)]
    return validate_ground_truth({"images": images, "annotations": [], "categories": []})


def test_file_names_match_the_end_of_the_uri_on_any_scheme():
    gt = _gt_with("val2017/1.jpg", "2.jpg", "val2017/3.jpg")
    match = match_images(gt, ["gs://b/coco/val2017/1.jpg", "file:///data/2.jpg", "/data/val2017/3.jpg"])
    assert match.ids == {"gs://b/coco/val2017/1.jpg": 1, "file:///data/2.jpg": 2, "/data/val2017/3.jpg": 3}
    assert (match.unannotated, match.missing, match.ambiguous) == ((), (), ())


def test_the_longest_suffix_wins_over_a_basename():
    gt = _gt_with("a/1.jpg", "b/1.jpg")
    match = match_images(gt, ["gs://x/b/1.jpg", "gs://x/c/1.jpg"])
    assert match.ids == {"gs://x/b/1.jpg": 2}
    assert match.unannotated == ("gs://x/c/1.jpg",)  # two annotated images are called 1.jpg: no guess
    assert match.missing == (1,)


def test_a_unique_basename_matches_when_the_folders_differ():
    match = match_images(_gt_with("val2017/000001.jpg"), ["gs://bucket/images/000001.jpg"])
    assert match.ids == {"gs://bucket/images/000001.jpg": 1}


def test_two_uris_claiming_one_image_are_both_left_out():
    match = match_images(_gt_with("1.jpg", "2.jpg"), ["gs://x/a/1.jpg", "gs://x/b/1.jpg", "gs://x/2.jpg"])
    assert match.ids == {"gs://x/2.jpg": 2}
    assert set(match.ambiguous) == {"gs://x/a/1.jpg", "gs://x/b/1.jpg"}
    assert match.missing == (1,)


# -- the annotation file -------------------------------------------------------------------------


def _raw_gt() -> dict:
    return {
        "images": [{"id": 7, "file_name": "7.jpg"}],
        "annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 5], "id": 99}],
        "categories": [{"id": 1, "name": "person"}],
    }


def test_load_fills_what_cocoeval_needs(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_raw_gt()))
    gt = load_ground_truth(str(path))
    assert gt["annotations"] == [
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 5], "id": 1, "iscrowd": 0, "area": 20.0}
    ]


def test_load_reads_gcs(gcs_bucket):
    uri = f"{gcs_bucket}/annotations/gt.json"
    with fsspec.open(uri, "w") as fh:
        json.dump(_raw_gt(), fh)
    assert load_ground_truth(uri)["images"] == [{"id": 7, "file_name": "7.jpg"}]


def _break(change) -> dict:
    data = _raw_gt()
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        (_break(lambda d: d.pop("categories")), "categories missing or not a list"),
        (_break(lambda d: d["images"][0].pop("file_name")), r"images\[0\] \(id 7\) needs a file_name"),
        (
            _break(lambda d: d["images"].append({"id": 8, "file_name": "./7.jpg"})),
            "repeated image file_name: 7.jpg",
        ),
        (_break(lambda d: d["images"].append({"id": 7, "file_name": "x.jpg"})), "repeated image id: 7"),
        (_break(lambda d: d["annotations"][0].update(image_id=3)), "refers to image_id 3"),
        (_break(lambda d: d["annotations"][0].update(category_id=5)), "refers to category_id 5"),
        (_break(lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 2])), "width, height >= 0"),
        (_break(lambda d: d["annotations"][0].update(bbox=[0, 0, 1])), r"needs bbox \[x, y, width, height\]"),
        (_break(lambda d: d["annotations"][0].update(image_id=[7])), r"refers to image_id \[7\]"),
        (_break(lambda d: d["annotations"][0].update(iscrowd="no")), "needs iscrowd 0 or 1"),
        (_break(lambda d: d["annotations"][0].update(area=-1)), "needs a finite area >= 0"),
        (_break(lambda d: d["annotations"][0].update(area=10**400)), "needs a finite area >= 0"),
        (_break(lambda d: d["annotations"][0].update(bbox=[0, 0, 1e200, 1e200])), "needs a finite area >= 0"),
        (_break(lambda d: d["annotations"][0].update(bbox=[0, 0, 10**400, 1])), r"needs bbox \[x, y"),
        (_break(lambda d: d["images"][0].update(id=2**63)), r"images\[0\] needs an integer id"),
        (_break(lambda d: d["categories"][0].update(id=-1)), r"categories\[0\] needs an integer id"),
    ],
)
def test_bad_annotation_files_are_refused_with_the_reason(tmp_path, data, message):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GroundTruthError, match=message):
        load_ground_truth(str(path))


_odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400), 1e200]),  # JSON integers have no size limit
    st.floats(),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def _or_odd(values):
    return st.one_of(values, values, _odd)


_number = _or_odd(st.one_of(st.integers(-5, 300), st.floats(-5, 300)))
_any_gt = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {
                    "id": _or_odd(st.integers(0, 4)),
                    "file_name": _or_odd(st.sampled_from(["val/1.jpg", "2.jpg", ""])),
                }
            ),
            max_size=3,
        ),
        "annotations": st.lists(
            st.fixed_dictionaries(
                {
                    "image_id": _or_odd(st.integers(0, 4)),
                    "category_id": _or_odd(st.sampled_from([PERSON, DOG, 99])),
                    "bbox": _or_odd(st.lists(_number, min_size=3, max_size=5)),
                },
                optional={"iscrowd": _or_odd(st.sampled_from([0, 1])), "area": _number, "id": _odd},
            ),
            max_size=5,
        ),
        "categories": st.lists(
            st.fixed_dictionaries(
                {
                    "id": _or_odd(st.sampled_from([PERSON, DOG, 99])),
                    "name": _or_odd(st.sampled_from(["person", "x"])),
                }
            ),
            max_size=3,
        ),
    }
)


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_any_gt)
def test_a_ground_truth_that_validates_can_always_be_scored(data):
    """Whatever a JSON file holds, validation says GroundTruthError or gives ground truth COCOeval scores
    without raising: nothing that passes the check before the GPU work can fail the evaluate step after."""
    data = json.loads(json.dumps(data))  # as a file gives it: NaN and inf survive, tuples do not
    try:
        gt = validate_ground_truth(data)
    except GroundTruthError:
        return
    rows = [row("gs://b/val/1.jpg", [det(PERSON, BOX[1]), det(DOG, BOX[2], score=0.6)]), row("gs://b/2.jpg")]
    try:
        result = evaluate_run(rows, gt)
    except EvaluationError as error:
        assert "none of the run's 2 images matches" in str(error)
    else:
        assert result["eval_images"] >= 1


def test_unreadable_annotation_files_are_refused(tmp_path):
    with pytest.raises(GroundTruthError, match="does not exist"):
        load_ground_truth(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GroundTruthError, match="is not JSON"):
        load_ground_truth(str(tmp_path / "bad.json"))


# -- a run's shard files -------------------------------------------------------------------------


def write_shard(prefix: str, shard_index: int, rows: list[dict]) -> None:
    """A results file as the engine writes it: every schema.RESULTS column."""
    full = [
        {
            "run_id": "manual__1",
            "run_date": dt.date(2026, 11, 21),
            "shard_index": shard_index,
            "error": None if r["status"] == schema.STATUS_OK else "decode: corrupt",
            "width": 640,
            "height": 480,
            "num_detections": len(r["detections"]),
            "fetch_ms": 1.0,
            "decode_ms": 1.0,
            "infer_ms": 1.0,
            "model_name": catalog.DEFAULT_MODEL,
            "weights_id": "COCO_V1",
            "random_weights": False,
            "processed_at": dt.datetime(2026, 11, 21, tzinfo=dt.UTC),
            **r,
        }
        for r in rows
    ]
    table = pa.Table.from_pylist(full, schema=schema.arrow_schema(schema.RESULTS))
    with fsspec.open(layout.shard_results_uri(prefix, shard_index), "wb", auto_mkdir=True) as fh:
        pq.write_table(table, fh)


@pytest.fixture
def gt_file(tmp_path) -> str:
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(coco_gt()))
    return str(path)


def test_a_run_is_scored_from_its_shard_files(tmp_path, gt_file):
    prefix = layout.run_prefix(str(tmp_path / "out"), "manual__2026-11-21T00:00:00+00:00")
    first, second = perfect_rows(dx=0.1)
    write_shard(prefix, 0, [first])
    write_shard(prefix, 1, [second])
    got = evaluation.evaluate_run_files(gt_file, prefix, [0, 1], score_threshold=0.05)
    assert got["coco_map"] == pytest.approx(0.7)
    assert got["ground_truth_uri"] == gt_file and got["eval_images"] == 2
    assert set(evaluation.ACCURACY_COLUMNS) <= got.keys()
    assert evaluation.evaluate_run_files(gt_file, prefix)["coco_map"] == pytest.approx(0.7)  # by glob


def test_a_missing_shard_file_is_an_error(tmp_path, gt_file):
    prefix = str(tmp_path / "run")
    write_shard(prefix, 0, perfect_rows())
    with pytest.raises(EvaluationError, match="shard-00001.parquet is missing"):
        evaluation.evaluate_run_files(gt_file, prefix, [0, 1])


def test_a_run_on_gcs_is_scored(gcs_bucket, gt_file):
    prefix = f"{gcs_bucket}/out/manual__1"
    write_shard(prefix, 0, perfect_rows())
    gt_uri = f"{gcs_bucket}/gt.json"
    with fsspec.open(gt_uri, "w") as fh, open(gt_file) as src:
        fh.write(src.read())
    assert evaluation.evaluate_run_files(gt_uri, prefix)["coco_map"] == pytest.approx(1.0)


# -- what the run record and the engine get -------------------------------------------------------


def test_the_accuracy_columns_are_runs_columns():
    runs = {f.name: f for f in schema.RUNS}
    for name in evaluation.ACCURACY_COLUMNS:
        assert name in runs and runs[name].mode == "NULLABLE", name
    assert evaluation.no_accuracy() == dict.fromkeys(evaluation.ACCURACY_COLUMNS)


def test_the_engine_keeps_low_score_boxes_only_when_evaluating():
    limits = evaluation.engine_detection_limits
    assert limits(0.5, 50, evaluating=False, eval_score_threshold=0.05) == (0.5, 50)
    assert limits(0.5, 50, evaluating=True, eval_score_threshold=0.05) == (0.05, 100)
    assert limits(0.01, 300, evaluating=True, eval_score_threshold=0.05) == (0.01, 300)
