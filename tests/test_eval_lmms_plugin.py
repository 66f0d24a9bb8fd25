"""lmms-eval plugin driven directly with fake requests (objects with ``.args``) and a fake pipeline."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evaluation.lmms_eval_showo2 import Showo2, apply_until, strip_visual_tokens


class Req:
    def __init__(self, *args: Any) -> None:
        self.args = args


class FakePipe:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict]] = []

    def understand(self, images: list, questions: list[str], **kw: Any) -> list[str]:
        self.calls.append(("image", len(questions), kw))
        out = []
        for im, q in zip(images, questions):
            tag = "none" if im is None else f"img{im.size[0]}"
            out.append(f" {tag}|{q} STOP trailing")
        return out

    def understand_video(self, videos: list, questions: list[str], num_frames: int = 0, **kw: Any) -> list[str]:
        self.calls.append(("video", len(questions), dict(kw, num_frames=num_frames)))
        return [f"vid:{v if isinstance(v, str) else v.shape[0]}|{q}" for v, q in zip(videos, questions)]


DOCS = {
    0: {"img": Image.new("RGB", (10, 10)), "q": "Is it red?"},
    1: {"img": Image.new("RGB", (12, 12)), "q": "Count?"},
    2: {"img": None, "q": "Text only?"},
    3: {"video": "clip.mp4", "q": "What happens?"},
    4: {"imgs": [Image.new("RGB", (14, 14)), Image.new("RGB", (9, 9))], "q": "Two images?"},
    5: {"frames": np.zeros((5, 8, 8, 3), np.uint8), "q": "Frames?"},
}


def doc_to_visual(doc: dict) -> list:
    if "video" in doc:
        return [doc["video"]]
    if "frames" in doc:
        return [doc["frames"]]
    if "imgs" in doc:
        return doc["imgs"]
    return [doc["img"]] if doc["img"] is not None else []


@pytest.fixture
def model() -> Showo2:
    m = Showo2.create_from_arg_string("pretrained=unused,batch_size=2,max_new_tokens=7,num_frames=9",
                                      {"pipe": FakePipe()})
    m.task_dict = {"toy": {"test": DOCS}}
    return m


def test_generate_until_batched_in_order(model: Showo2) -> None:
    gk = {"until": ["STOP"], "max_new_tokens": 16, "temperature": 0}
    reqs = [Req(f"<image>\n{DOCS[i]['q']}", dict(gk), doc_to_visual, i, "toy", "test") for i in range(6)]
    out = model.generate_until(reqs)
    assert out[0] == "img10|Is it red?"
    assert out[1] == "img12|Count?"
    assert out[2] == "none|Text only?"
    assert out[3] == "vid:clip.mp4|What happens?"
    assert out[4] == "img14|Two images?" and model.extra_images_dropped == 1
    assert out[5] == "vid:5|Frames?"
    pipe = model.pipe
    image_calls = [c for c in pipe.calls if c[0] == "image"]
    assert all(n <= 2 for _, n, _ in pipe.calls)  # batch_size=2
    assert sum(n for _, n, _ in image_calls) == 4
    assert all(c[2]["max_new_tokens"] == 16 and c[2]["temperature"] == 0.0 for c in pipe.calls)
    assert [c for c in pipe.calls if c[0] == "video"][0][2]["num_frames"] == 9


def test_generate_until_defaults_and_sampling(model: Showo2) -> None:
    out = model.generate_until([Req("Is it red?", {}, doc_to_visual, 0, "toy", "test"),
                                Req("Count?", {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
                                    doc_to_visual, 1, "toy", "test")])
    assert out[0] == "img10|Is it red? STOP trailing"  # no `until`: whole answer, stripped
    kws = [c[2] for c in model.pipe.calls]
    assert {"max_new_tokens": 7, "temperature": 0.0} in [{k: v for k, v in k_.items() if k != "batch_size"}
                                                         for k_ in kws]
    sampled = [k for k in kws if k["temperature"] == 0.7][0]
    assert sampled["top_p"] == 0.9


def test_multi_round(model: Showo2) -> None:
    def doc_to_text(doc: dict, previous_output: list, round_idx: int, previous_round_info: Any = None) -> tuple:
        assert len(previous_output) == round_idx
        if round_idx == 2:
            return None, None, True, previous_output, previous_round_info
        return None, f"follow-up {round_idx} after {previous_output[-1]}", False, None, {"r": round_idx}

    def doc_to_text_str(doc: dict, previous_output: list, round_idx: int) -> str | None:
        return None if round_idx >= 3 else f"again {round_idx}"

    reqs = [Req("first?", {"until": ["STOP"]}, doc_to_visual, doc_to_text, 0, "toy", "test"),
            Req("first?", {}, doc_to_visual, doc_to_text_str, 2, "toy", "test")]
    out = model.generate_until_multi_round(reqs)
    assert out[0] == ("img10|first?", "img10|follow-up 1 after img10|first?")
    assert len(out[1]) == 3 and out[1][2].startswith("none|again 2")


def test_loglikelihood_not_supported(model: Showo2) -> None:
    with pytest.raises(NotImplementedError, match="generate_until"):
        model.loglikelihood([Req("q", "a", doc_to_visual, 0, "toy", "test")])


def test_helpers_and_plugin_table() -> None:
    assert strip_visual_tokens("<image>\nWhat is <image 1>?") == "What is <image 1>?"
    assert apply_until("yes.\nUser: more", ["\nUser:", "</s>"]) == "yes."
    assert apply_until(" yes ", None) == "yes"
    table = importlib.import_module("evaluation.lmms_plugin.models").AVAILABLE_MODELS
    mod = importlib.import_module("evaluation.lmms_plugin.models.showo2")
    assert getattr(mod, table["showo2"]) is Showo2
