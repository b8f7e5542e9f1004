"""The picture check: a tiny random classifier saved as the real model is, loaded by the real code."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageStat

from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.safety.images import (
    IMAGE_MODEL_ENV,
    ClassifierChecker,
    ImageChecker,
    flag_images,
    load_image_checker,
    placeholder_image,
    save_random_image_classifier,
)


def pictures(count: int, size_px: int = 64) -> list[Image.Image]:
    """``count`` different plain pictures."""
    return [
        Image.new("RGB", (size_px, size_px), (40 * i % 256, 90, 200 - 30 * i % 200)) for i in range(count)
    ]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """Folders of tiny classifiers whose head says ``normal`` / ``nsfw`` for every picture."""
    root = tmp_path_factory.mktemp("picture-check")
    return {
        verdict: save_random_image_classifier(root / verdict, verdict=verdict)
        for verdict in ("normal", "nsfw")
    }


def test_tiny_classifier_files_load_completely(classifiers):
    """The numpy-written checkpoint has exactly the weights transformers' ViT classifier expects."""
    from transformers import AutoModelForImageClassification

    _, info = AutoModelForImageClassification.from_pretrained(classifiers["normal"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_normal_classifier_flags_nothing_and_nsfw_classifier_flags_everything(classifiers):
    """The real loading code reads the labels and the head: verdicts follow the saved weights."""
    normal = load_image_checker(str(classifiers["normal"]))
    nsfw = load_image_checker(str(classifiers["nsfw"]))
    assert isinstance(normal, ImageChecker) and isinstance(normal, ClassifierChecker)
    images = [*pictures(3), Image.new("L", (40, 20), 128)]  # any size and mode
    assert normal.flags(images) == [False] * 4
    assert nsfw.flags(images) == [True] * 4
    assert all(score < 0.05 for score in normal.scores(images))
    assert all(score > 0.95 for score in nsfw.scores(images))
    assert normal.flags([]) == []


def test_a_batch_is_one_forward_pass(classifiers):
    """Five pictures are classified in one call of the model."""
    checker = load_image_checker(str(classifiers["normal"]))
    calls = []
    handle = checker.model.register_forward_hook(
        lambda module, args, output: calls.append(output.logits.shape)
    )
    try:
        checker.flags(pictures(5))
    finally:
        handle.remove()
    assert [tuple(shape) for shape in calls] == [(5, 2)]


def test_the_setting_names_the_model(classifiers, monkeypatch):
    """Without an argument the model comes from S2I_SAFETY_IMAGE_MODEL."""
    monkeypatch.setenv(IMAGE_MODEL_ENV, str(classifiers["nsfw"]))
    assert load_image_checker().flags(pictures(1)) == [True]


def test_a_missing_folder_fails_with_the_setting_to_fix(tmp_path):
    """A folder that does not exist is ModelNotAvailable naming S2I_SAFETY_IMAGE_MODEL."""
    with pytest.raises(ModelNotAvailable, match=IMAGE_MODEL_ENV):
        load_image_checker(str(tmp_path / "nothing-here"))


def test_an_uncached_model_offline_fails_at_once(monkeypatch):
    """Offline, a hub model that is not cached fails at once, naming the setting."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailable, match=IMAGE_MODEL_ENV):
        load_image_checker("speech2image-nb-tests/no-such-picture-model")


def test_a_model_without_an_unsafe_label_is_refused(tmp_path):
    """A classifier of cats and dogs is no picture check: ModelNotAvailable says so."""
    folder = save_random_image_classifier(tmp_path / "pets")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "cat", "1": "dog"}, {"cat": 0, "dog": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailable, match="no unsafe label"):
        load_image_checker(str(folder))


class Raising:
    def flags(self, images):
        raise RuntimeError("out of memory")


class Short:
    def flags(self, images):
        return [False]


def test_the_check_fails_closed():
    """A checker that raises, miscounts or is missing withholds every picture of the batch."""
    images = pictures(3)
    assert flag_images(Raising(), images) == [True, True, True]
    assert flag_images(Short(), images) == [True, True, True]
    assert flag_images(None, images) == [True, True, True]
    assert flag_images(Raising(), []) == []


def test_placeholder_is_calm_and_the_same_size():
    """The placeholder has the picture's size, is light (never a black flash) and is always the same."""
    for size in ((256, 256), (512, 320), (8, 8)):
        tile = placeholder_image(size)
        assert tile.size == size and tile.mode == "RGB"
        assert sum(ImageStat.Stat(tile).mean) / 3 > 150
        assert tile.tobytes() == placeholder_image(size).tobytes()
