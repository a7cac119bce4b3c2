"""COCO box mAP of a run, when its conf names a ground truth: accuracy recorded beside speed and cost.

The run's detections are read from its shard Parquet files (not the warehouse), matched to a COCO annotation
file by `file_name`, and scored by pycocotools' own COCOeval, so the numbers are the ones torchvision's
published tables use. Torch-free: torchvision's COCO label set comes from `catalog.COCO_V1_CATEGORIES`.

Scoring rules, each chosen so that nothing is silently lost:
- a results row whose image is not in the annotation file is left out of the score and counted;
- an annotated image of the run with no detections, or whose row is an error, counts as misses;
- annotated images that were not part of the run are left out (a run may cover a subset) and counted;
- a URI that matches an annotated image ambiguously (two URIs, one image) is left out and counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detection_engine import layout, schema, storage
from detection_engine.catalog import COCO_V1_CATEGORIES, PUBLISHED_SCORE_THRESHOLD
from detection_pipeline.errors import PermanentError

log = logging.getLogger(__name__)

# COCOeval.stats indices -> runs table columns.
METRIC_COLUMNS: dict[str, int] = {
    "coco_map": 0,
    "coco_map50": 1,
    "coco_map75": 2,
    "coco_map_small": 3,
    "coco_map_medium": 4,
    "coco_map_large": 5,
    "coco_ar1": 6,
    "coco_ar10": 7,
    "coco_ar100": 8,
}
# Every runs column this module fills (schema.RUNS declares them; a test checks they are there).
ACCURACY_COLUMNS: tuple[str, ...] = ("ground_truth_uri", "eval_images", *METRIC_COLUMNS)

GROUND_TRUTH_MAX_BYTES = 2 << 30  # COCO train2017's instances file is ~450 MB
GROUND_TRUTH_TIMEOUT_S = 600.0
COCO_MAX_DETECTIONS = 100  # COCOeval's largest maxDets: AR@100 needs up to 100 boxes per image

_RESULT_COLUMNS = ("image_uri", "status", "detections")


class GroundTruthError(PermanentError, ValueError):
    """The annotation file cannot be read or is not COCO detection ground truth."""


class EvaluationError(PermanentError, ValueError):
    """The run's results cannot be scored against the ground truth (the message says why); the files a
    retry would read are the same, so it is permanent."""


# -- what the run record gets --------------------------------------------------------------------


def no_accuracy() -> dict:
    """The accuracy columns of a run without ground truth: all null."""
    return dict.fromkeys(ACCURACY_COLUMNS)


def engine_detection_limits(
    score_threshold: float, max_detections: int, *, evaluating: bool, eval_score_threshold: float
) -> tuple[float, int]:
    """The threshold and cap the engine must run with: mAP integrates over low-score boxes too.

    Without ground truth the run's own settings stand. With it, the engine keeps boxes down to
    `eval_score_threshold` and up to COCO's 100 per image; the results table then holds those boxes too,
    each with its score, so consumers filter at the confidence they need.
    """
    if not evaluating:
        return score_threshold, max_detections
    return min(score_threshold, eval_score_threshold), max(max_detections, COCO_MAX_DETECTIONS)


def evaluate_run_files(
    ground_truth_uri: str,
    run_prefix: str,
    shard_indices: Iterable[int] | None = None,
    score_threshold: float = PUBLISHED_SCORE_THRESHOLD,
) -> dict:
    """Score the run's shard files against the annotation file; the accuracy columns plus diagnostics."""
    gt = load_ground_truth(ground_truth_uri)
    result = evaluate_run(read_results(run_prefix, shard_indices), gt, score_threshold)
    return {**result, "ground_truth_uri": ground_truth_uri}


# -- ground truth --------------------------------------------------------------------------------


def load_ground_truth(uri: str) -> dict:
    """Read and validate a COCO annotation file (local, file:// or gs://), ready for COCOeval.

    Returns a copy with every annotation given `iscrowd` (default 0), `area` (default box area: a box-only
    file has no segmentation area) and a fresh unique `id` (COCOeval keys matches by it).
    """
    try:  # bounded: a FIFO, a device or a huge file is refused, never read until memory runs out
        data = json.loads(
            storage.read_bytes(
                uri, storage.ReadLimits(max_bytes=GROUND_TRUTH_MAX_BYTES, timeout_s=GROUND_TRUTH_TIMEOUT_S)
            )
        )
    except storage.ReadRefused as exc:
        if exc.code == "not_found":
            raise GroundTruthError(f"ground truth {uri} does not exist") from None
        raise GroundTruthError(f"cannot read ground truth {uri}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"ground truth {uri} is not JSON: {exc}") from None
    except Exception as exc:
        raise GroundTruthError(f"cannot read ground truth {uri}: {type(exc).__name__}: {exc}") from None
    try:
        return validate_ground_truth(data)
    except GroundTruthError as exc:
        raise GroundTruthError(f"ground truth {uri}: {exc}") from None


def validate_ground_truth(data: object) -> dict:
    """The checks of `load_ground_truth`, on an already parsed object."""
    if not isinstance(data, dict):
        raise GroundTruthError("not a COCO annotation file: expected a JSON object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise GroundTruthError(
            f"not a COCO annotation file: {', '.join(missing)} missing or not a list "
            "(expected the keys images, annotations and categories)"
        )
    images = [_checked_image(i, image) for i, image in enumerate(data["images"])]
    categories = [_checked_category(i, category) for i, category in enumerate(data["categories"])]
    _require_unique("image id", [image["id"] for image in images])
    _require_unique("image file_name", ["/".join(_path_parts(image["file_name"])) for image in images])
    _require_unique("category id", [category["id"] for category in categories])
    image_ids = {image["id"] for image in images}
    category_ids = {category["id"] for category in categories}
    annotations = [
        _checked_annotation(i, ann, image_ids, category_ids) for i, ann in enumerate(data["annotations"])
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _checked_image(index: int, image: object) -> dict:
    if not isinstance(image, dict) or not _is_id(image.get("id")):
        raise GroundTruthError(f"images[{index}] needs an integer id (0 to 2^63-1)")
    if not isinstance(image.get("file_name"), str) or not _path_parts(image["file_name"]):
        raise GroundTruthError(f"images[{index}] (id {image['id']}) needs a file_name")
    return dict(image)


def _checked_category(index: int, category: object) -> dict:
    if not isinstance(category, dict) or not _is_id(category.get("id")):
        raise GroundTruthError(f"categories[{index}] needs an integer id (0 to 2^63-1)")
    if not isinstance(category.get("name"), str):
        raise GroundTruthError(f"categories[{index}] (id {category['id']}) needs a name")
    return dict(category)


def _checked_annotation(index: int, ann: object, image_ids: set[int], category_ids: set[int]) -> dict:
    where = f"annotations[{index}]"
    if not isinstance(ann, dict):
        raise GroundTruthError(f"{where} is not an object")
    if not _is_id(ann.get("image_id")) or ann["image_id"] not in image_ids:
        raise GroundTruthError(f"{where} refers to image_id {ann.get('image_id')!r}, which is not in images")
    if not _is_id(ann.get("category_id")) or ann["category_id"] not in category_ids:
        raise GroundTruthError(
            f"{where} refers to category_id {ann.get('category_id')!r}, which is not in categories"
        )
    box = ann.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(_is_number(v) for v in box)
        or box[2] < 0
        or box[3] < 0
    ):
        raise GroundTruthError(
            f"{where} needs bbox [x, y, width, height] with width, height >= 0; got {box!r}"
        )
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        raise GroundTruthError(f"{where} needs iscrowd 0 or 1; got {crowd!r}")
    area = float(box[2]) * float(box[3]) if ann.get("area") is None else ann["area"]
    if not (_is_number(area) and area >= 0):
        raise GroundTruthError(f"{where} needs a finite area >= 0 (given, or its box's); got {area!r}")
    return {**ann, "id": index + 1, "iscrowd": int(crowd), "area": float(area)}


def _is_id(value: object) -> bool:
    """COCOeval keeps ids in int64 arrays; -1 is this module's 'no image'."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_number(value: object) -> bool:
    """A finite JSON number that fits a float (JSON integers have no size limit: 10**400 is one)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _require_unique(what: str, values: Sequence) -> None:
    seen: set = set()
    repeated = sorted({v for v in values if v in seen or seen.add(v)}, key=str)
    if repeated:
        raise GroundTruthError(f"repeated {what}: {', '.join(map(str, repeated[:5]))}")


# -- images: run URIs -> annotated image ids -----------------------------------------------------


@dataclass(frozen=True)
class ImageMatch:
    """Which results URI is which annotated image, and what matched nothing on either side."""

    ids: dict[str, int]  # image URI -> ground truth image id (one-to-one)
    unannotated: tuple[str, ...]  # run URIs with no image in the annotation file
    missing: tuple[int, ...]  # annotated image ids no run URI is matched to
    ambiguous: tuple[str, ...]  # run URIs left out because another URI claims the same image


def match_images(gt: dict, image_uris: Iterable[str]) -> ImageMatch:
    """Map each URI to the annotated image whose `file_name` it ends with.

    First the longest exact path-suffix match (`file_name` "val2017/1.jpg" matches "gs://b/coco/val2017/1.jpg"),
    then, for URIs still unmatched, the basename when exactly one annotated image has it. An image claimed
    by more than one URI in the same pass is given to none of them: scoring the same image twice would bias
    the result, and guessing which copy is meant would hide the problem.
    """
    uris = list(dict.fromkeys(image_uris))
    by_path = {_path_parts(image["file_name"]): image["id"] for image in gt["images"]}
    by_basename: dict[str, list[int]] = defaultdict(list)
    for parts, image_id in by_path.items():
        by_basename[parts[-1]].append(image_id)

    suffix_claims = {uri: _longest_suffix_match(_path_parts(uri), by_path) for uri in uris}
    basename_claims = {
        uri: candidates[0]
        for uri, image_id in suffix_claims.items()
        if image_id is None and len(candidates := by_basename.get(_basename(uri), [])) == 1
    }
    ids: dict[str, int] = {}
    ambiguous: list[str] = []
    claimed: set[int] = set()
    for claims in (suffix_claims, basename_claims):  # a basename never takes an image a full suffix took
        owners: dict[int, list[str]] = defaultdict(list)
        for uri, image_id in claims.items():
            if image_id is not None and image_id not in claimed:
                owners[image_id].append(uri)
        for image_id, claimants in owners.items():
            if len(claimants) == 1:
                ids[claimants[0]] = image_id
            else:
                ambiguous.extend(claimants)
        claimed.update(owners)
    matched_or_ambiguous = ids.keys() | set(ambiguous)
    return ImageMatch(
        ids=ids,
        unannotated=tuple(uri for uri in uris if uri not in matched_or_ambiguous),
        missing=tuple(sorted({image["id"] for image in gt["images"]} - set(ids.values()))),
        ambiguous=tuple(ambiguous),
    )


def matched_images(gt: dict, image_uris: Sequence[str]) -> ImageMatch:
    """`match_images`, or EvaluationError when no URI matches an annotated image: a run that cannot be
    scored at all (checked on the manifest too, before any shard starts)."""
    match = match_images(gt, image_uris)
    if not match.ids:
        examples = ", ".join(repr(u) for u in image_uris[:2])
        names = ", ".join(repr(i["file_name"]) for i in gt["images"][:2])
        raise EvaluationError(
            f"none of the run's {len(image_uris)} images matches a file_name of the ground truth "
            f"(run: {examples}; ground truth: {names}); file_name must be the end of the image URI"
        )
    return match


def _path_parts(path: str) -> tuple[str, ...]:
    """Path components without scheme, empty and '.' parts: 'gs://b/x/./y.jpg' -> ('b', 'x', 'y.jpg')."""
    _, sep, rest = path.partition("://")
    return tuple(p for p in (rest if sep else path).replace("\\", "/").split("/") if p not in ("", "."))


def _basename(uri: str) -> str:
    parts = _path_parts(uri)
    return parts[-1] if parts else ""


def _longest_suffix_match(parts: tuple[str, ...], by_path: Mapping[tuple[str, ...], int]) -> int | None:
    for start in range(len(parts)):
        if (image_id := by_path.get(parts[start:])) is not None:
            return image_id
    return None


# -- categories: torchvision label ids -> annotation category ids --------------------------------


@dataclass(frozen=True)
class CategoryMap:
    """How detection label ids become the annotation file's category ids."""

    by: str  # "name": COCO_V1 label names matched to the file's names | "id": label id is the category id
    label_to_category: dict[int, int]
    unmatched: tuple[str, ...]  # annotation categories no label maps to (their AP will be 0)


def map_categories(gt: dict) -> CategoryMap:
    """Map torchvision COCO_V1 label ids to the file's category ids by name.

    For the official COCO files this is the identity (torchvision's label ids are COCO's category ids), and
    it stays right for files that renumber the same classes (e.g. contiguous 1..80). A file none of whose
    names is a COCO class is taken to be the label set a fine-tuned model was trained on, whose label ids are
    that file's category ids (torchvision's reference training keeps them as labels).
    """
    coco_ids = {_name_key(name): i for i, name in enumerate(COCO_V1_CATEGORIES) if name != "N/A" and i > 0}
    named = {category["id"]: _name_key(category["name"]) for category in gt["categories"]}
    if not any(name in coco_ids for name in named.values()):
        return CategoryMap("id", {cid: cid for cid in named}, ())
    mapping = {coco_ids[name]: cid for cid, name in named.items() if name in coco_ids}
    unmatched = tuple(c["name"] for c in gt["categories"] if _name_key(c["name"]) not in coco_ids)
    return CategoryMap("name", mapping, unmatched)


def _name_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


# -- the run's results ---------------------------------------------------------------------------


def read_results(run_prefix: str, shard_indices: Iterable[int] | None = None) -> pa.Table:
    """The columns scoring needs from the run's shard results files (all of them when no indices are given)."""
    if shard_indices is None:
        uris = storage.glob(layout.results_glob(run_prefix))
    else:
        uris = [layout.shard_results_uri(run_prefix, i) for i in shard_indices]
    if not uris:
        raise EvaluationError(f"no results files under {run_prefix}")
    tables = []
    for uri in uris:
        try:
            fs, path = storage.filesystem_for(uri)
            with fs.open(path, "rb") as fh:
                tables.append(pq.read_table(fh, columns=list(_RESULT_COLUMNS)))
        except FileNotFoundError:
            raise EvaluationError(f"results file {uri} is missing; the shard did not finish") from None
    return pa.concat_tables(tables).cast(_results_schema())


def _results_schema() -> pa.Schema:
    full = schema.arrow_schema(schema.RESULTS)
    return pa.schema([full.field(name) for name in _RESULT_COLUMNS])


def _as_table(results: pa.Table | Sequence[Mapping]) -> pa.Table:
    if isinstance(results, pa.Table):
        return results.select(list(_RESULT_COLUMNS)).cast(_results_schema())
    rows = [{name: row.get(name) for name in _RESULT_COLUMNS} for row in results]
    return pa.Table.from_pylist(rows, schema=_results_schema())


# -- scoring -------------------------------------------------------------------------------------


def evaluate_run(
    results: pa.Table | Sequence[Mapping],
    gt: dict,
    score_threshold: float = PUBLISHED_SCORE_THRESHOLD,
) -> dict:
    """COCO box metrics of a run's results rows (schema.RESULTS columns image_uri, status, detections).

    Returns the runs columns of `METRIC_COLUMNS` (None where COCOeval has no ground truth to score, e.g. no
    small objects) and `eval_images`, plus diagnostics for the report: `unannotated_images`,
    `missing_images`, `ambiguous_images`, `failed_images`, `detections_scored`, `detections_unmapped`,
    `category_match` and `unmatched_categories`.
    """
    table = _as_table(results)
    uris = table.column("image_uri").to_pylist()
    if len(set(uris)) != len(uris):
        raise EvaluationError(
            f"results hold {len(uris) - len(set(uris))} repeated image URIs; one row per image is expected"
        )
    match = matched_images(gt, uris)
    categories = map_categories(gt)
    detections, unmapped = _coco_detections(table, match.ids, categories, score_threshold)
    image_ids = sorted(match.ids.values())
    stats = _cocoeval_stats(gt, detections, image_ids)

    statuses = dict(zip(uris, table.column("status").to_pylist(), strict=True))
    failed = sum(1 for uri in match.ids if statuses[uri] != schema.STATUS_OK)
    if match.unannotated or match.ambiguous:
        log.warning(
            "scored %d images; left out %d without annotations and %d ambiguous",
            len(image_ids),
            len(match.unannotated),
            len(match.ambiguous),
        )
    return {
        **{column: _metric(stats[index]) for column, index in METRIC_COLUMNS.items()},
        "eval_images": len(image_ids),
        "unannotated_images": len(match.unannotated),
        "missing_images": len(match.missing),
        "ambiguous_images": len(match.ambiguous),
        "failed_images": failed,
        "detections_scored": len(detections),
        "detections_unmapped": unmapped,
        "category_match": categories.by,
        "unmatched_categories": list(categories.unmatched),
    }


def _coco_detections(
    table: pa.Table, image_ids: Mapping[str, int], categories: CategoryMap, score_threshold: float
) -> tuple[list[dict], int]:
    """COCO result dicts (image_id, category_id, bbox as x, y, w, h, score), columnar up to the last step."""
    row_image = np.array([image_ids.get(uri, -1) for uri in table.column("image_uri").to_pylist()], np.int64)
    column = table.column("detections").combine_chunks()
    flat = pc.list_flatten(column)
    if len(flat) == 0:
        return [], 0
    image = row_image[pc.list_parent_indices(column).to_numpy()]
    labels = flat.field("label_id").to_numpy(zero_copy_only=False)
    scores = flat.field("score").to_numpy(zero_copy_only=False)
    box_lists = flat.field("box")
    if not pc.all(pc.equal(pc.list_value_length(box_lists), 4)).as_py():
        raise EvaluationError("a detection box does not have 4 values [x1, y1, x2, y2]")
    boxes = pc.list_flatten(box_lists).to_numpy(zero_copy_only=False).reshape(-1, 4)

    lookup = np.full(max(int(labels.max()), max(categories.label_to_category, default=0)) + 1, -1, np.int64)
    for label, category in categories.label_to_category.items():
        lookup[label] = category
    category = np.where(labels >= 0, lookup[np.clip(labels, 0, None)], -1)
    scored = (image >= 0) & (scores >= score_threshold)
    unmapped = int(np.count_nonzero(scored & (category < 0)))
    keep = scored & (category >= 0)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
        for i, c, b, s in zip(image[keep], category[keep], xywh[keep], scores[keep], strict=True)
    ], unmapped


def _cocoeval_stats(gt: dict, detections: list[dict], image_ids: list[int]) -> np.ndarray:
    """COCOeval's 12 summary numbers for these images, its console output swallowed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        # Built like COCO.loadRes, which fails on an empty list (a run may detect nothing at all).
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": gt["images"],
            "categories": gt["categories"],
            "annotations": [
                {**d, "id": n + 1, "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                for n, d in enumerate(detections)
            ],
        }
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _metric(value: float) -> float | None:
    """COCOeval writes -1 where a metric has nothing to average (e.g. no small objects): that is a null."""
    return None if value < 0 else float(value)
