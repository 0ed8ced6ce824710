"""The words the page and its handlers show, in one place: titles, hints, and the messages a visitor or an
API client reads. Nothing here knows Gradio."""

from __future__ import annotations

RUN = "Segment"
TITLE = "DeOP open-vocabulary segmentation"
INTRO = ("# DeOP: open-vocabulary segmentation in one CLIP pass\n"
         "Segment Anything proposes masks; CLIP runs **once** over the whole image "
         "([DeOP, ICCV 2023](https://arxiv.org/abs/2305.01573)) and each mask is classified from the "
         "dense map. The crop baseline (one CLIP pass per mask) runs on the same masks for comparison.")
HINT = ("Classes separated by commas or new lines. Synonyms: a line `person: man, woman, child` is one class. "
        "Presets: `@voc`, `@coco`, `@ade20k`, `@cityscapes`.")
CLICK_HINT = "Click a segment in the image above, or a class in an overlay's legend, to see its top-5 classes."
CLICK_MODES = ("inspect", "add a segment", "refine the last added (-)")
CLICK_MODE_INFO = ("inspect a segment, or add one where none is (from the cached SAM embedding: no new encoder "
                   "pass); refine the last added one with a negative point")
COMPARE_INTRO = ("The same proposals classified by each training-free way of changing CLIP's last block (DeOP's "
                 "patch severance, MaskCLIP, SCLIP, ClearCLIP, NACLIP, plain CLIP); each variant's dense map is "
                 "cached, so a second look costs nothing.")
PROPOSAL_MODEL_INFO = "loaded on first use; same options for all"
FILES_LABEL = "Overlay, labels, per-class masks, JSON (segments as COCO RLE)"
DOWNLOADS_INTRO = ("The overlays, the full-size label maps, a ZIP of per-class masks and the results JSON (every "
                   "segment as COCO RLE, the segments you added included) are made when you ask for them.")
DOWNLOADS_BUTTON = "Make the files"
TABS = {"inspect": "Inspect a segment", "compare": "Compare variants", "heatmap": "Class heatmap",
        "downloads": "Downloads"}

NO_IMAGE = "Upload an image first (or click an example)."
NO_SESSION = "Segment an image first."
EXPIRED = ("This result is no longer kept on the server (it keeps the latest ones, for an hour); press Segment "
           "again.")
CLICK_ON_IMAGE = "Click on the image."
ADD_FIRST = "Add a segment first (click an uncovered pixel, or choose \"add a segment\")."


def too_many_added(limit: int) -> str:
    return f"At most {limit} added segments per image: refine the last one, or press {RUN} to start again."


def not_rerun(costly: list[str]) -> str:
    """An edit the caches cannot answer: said in the status line too, which an API client reads."""
    return (f"Not re-run: {', '.join(n.replace('_', ' ') for n in costly)} changed, which needs new proposals or "
            f"features; press {RUN} (API: /segment).")


def cached_rerun(cheap: list[str]) -> str:
    return f"Cached re-run ({', '.join(n.replace('_', ' ') for n in cheap)} changed). "


def run_label(costly: list[str]) -> str:
    """The button's label: what pressing it will run when a setting needing new proposals changed."""
    if not costly:
        return RUN
    return RUN + " (new " + ("image" if "image" in costly else "settings") + ": press to run SAM and CLIP again)"
