"""Reward preprocessing against the reference pipelines, pixel for pixel, on odd image sizes.

Every reference starts from an 8-bit image (a file, or an IMAGE tensor handed over as uint8), and
most resize the PIL image: PIL rounds to 8 bits after each of its two 1-D passes, which the pack
reproduces in integer arithmetic, so the pixels agree to float rounding, not just to a level.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import reward_fixtures as rf  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from progrpo_core.rewards import preprocess
from progrpo_core.rewards.preprocess import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePrep, centre_crop_offset,
                                             pil_resize, prep_from_hf_processor, to_levels)

SIZES = [(37, 53), (53, 37), (300, 517), (517, 300), (64, 65), (65, 64), (224, 224), (1024, 768), (1000, 230)]
EXACT = 2e-6                   # float rounding of the normalisation, on pixel values of order 1
ONE_LEVEL = 1.01 / 255


def _settings():
    return {k: v for k, v in rf.LEGACY_PREPROCESSOR.items() if k != "feature_extractor_type"}


def _clip_pil_backend():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil(**_settings())


def _openai_clip_transform(normalize: bool = False):
    import torchvision.transforms as T
    steps = [T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()]
    return T.Compose(steps + ([T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)] if normalize else []))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pil_resize_is_pils_bit_for_bit(interpolation):
    from PIL import Image
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    rng = np.random.default_rng(0)
    # random geometries (up and down, by both axes) plus the ones where Pillow >= 13 starts vertically
    cases = [tuple(int(v) for v in rng.integers(3, 600, 4)) for _ in range(60)]
    cases += [(900, 300, 224, 290), (517, 300, 224, 300), (40, 2, 7, 2), (5, 700, 5, 3), (1, 1, 9, 4)]
    for H, W, h, w in cases:
        a = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(a).resize((w, h), resample))
        got = pil_resize(torch.from_numpy(a).permute(2, 0, 1), (h, w), interpolation).permute(1, 2, 0).numpy()
        assert np.array_equal(expected, got), (H, W, h, w)


def test_pil_resize_is_batched_and_takes_only_levels():
    x = to_levels(rf.images(3, 37, 53, seed=1))
    together = pil_resize(x, (20, 31))
    one_by_one = torch.stack([pil_resize(i, (20, 31)) for i in x])
    assert torch.equal(together, one_by_one) and together.dtype == torch.uint8
    with pytest.raises(TypeError, match="uint8 levels, got torch.float32; use to_levels"):
        pil_resize(x.float(), (20, 31))


def test_images_are_taken_as_the_8_bit_image_a_reference_is_given():
    x = rf.images(2, 37, 53, seed=4, quantised=False)       # an IMAGE tensor off the 8-bit grid
    torch.testing.assert_close(ImagePrep()(x), ImagePrep()(to_levels(x).float() / 255), atol=0, rtol=0)
    assert torch.equal(to_levels(torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0])),
                       torch.tensor([0, 0, 128, 255, 255], dtype=torch.uint8))


@pytest.mark.parametrize("hw", SIZES)
def test_clip_processor_reproduced_exactly(hw):
    # PickScore and CLIP score: transformers' CLIP image processor in its PIL backend (the only one
    # before transformers 5, the one the models were trained with), given PIL images
    x = rf.images(2, *hw, seed=hw[1])
    prep = prep_from_hf_processor(_clip_pil_backend())
    ref = _clip_pil_backend()(images=[rf.to_pil(i) for i in x], return_tensors="pt")["pixel_values"]
    assert prep(x).shape == ref.shape == (2, 3, 224, 224)
    torch.testing.assert_close(prep(x), ref, atol=EXACT, rtol=0)


@pytest.mark.parametrize("hw", [(37, 53), (300, 517), (1024, 768)])
def test_transformers_5_torchvision_backend_is_within_two_levels(hw):
    # transformers >= 5 defaults to resizing the 8-bit image in float with one final rounding: it
    # differs from its PIL backend (and from us) by at most two levels (on 0.4-27 % of the pixels)
    from transformers import CLIPImageProcessor
    x = rf.images(2, *hw, seed=5)
    ref = CLIPImageProcessor(**_settings())(images=[rf.to_pil(i) for i in x], do_normalize=False,
                                            return_tensors="pt")["pixel_values"]
    assert (prep_from_hf_processor(_clip_pil_backend()).geometry(x) - ref).abs().max() <= 2 * ONE_LEVEL


@pytest.mark.parametrize("hw", SIZES)
def test_torchvision_resize_centercrop_on_pil_as_openai_clip(hw):
    # aesthetic and ImageReward: OpenAI CLIP's transform, torchvision Resize + CenterCrop on the PIL image
    x = rf.images(2, *hw, seed=3)
    ref = torch.stack([_openai_clip_transform(normalize=True)(rf.to_pil(i)) for i in x])
    torch.testing.assert_close(ImagePrep(crop_rounding="round")(x), ref, atol=EXACT, rtol=0)


def test_crop_rounding_rules_differ_where_the_references_do():
    # 64x65 resizes to 224x227: torchvision rounds the offset 1.5 to 2, transformers floors it to 1.
    x = rf.images(1, 64, 65, seed=0)
    floor = ImagePrep(crop_rounding="floor").geometry(x)
    rnd = ImagePrep(crop_rounding="round").geometry(x)
    assert (floor - rnd).abs().max() > 1e-2
    assert centre_crop_offset(227, 224, "round") == 2 and centre_crop_offset(227, 224, "floor") == 1
    assert centre_crop_offset(225, 224, "round") == 0 and centre_crop_offset(229, 224, "round") == 2


@pytest.mark.parametrize("hw", SIZES + [(100, 224), (224, 100), (225, 100)])
def test_hps_resize_longest_and_pad_matches_reference(hw):
    # HPSv2: ToTensor of the 8-bit image, then ResizeMaxSize resizes that float tensor
    import torchvision.transforms.functional as TF
    x = rf.images(2, *hw, seed=hw[0] + hw[1], quantised=False)
    prep = ImagePrep(size=224, crop=None, mode="longest", resampler="tensor")
    ours = prep(x)
    if max(hw) == 224 and hw[0] != hw[1]:
        # the reference leaves such images unpadded (and open_clip then fails); we pad
        q = to_levels(x).float() / 255
        ref = TF.normalize(TF.pad(q, [(224 - hw[1]) // 2, (224 - hw[0]) // 2, 224 - hw[1] - (224 - hw[1]) // 2,
                                      224 - hw[0] - (224 - hw[0]) // 2], fill=0), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    else:
        ref = torch.stack([rf.hps_resize_max_size(TF.to_tensor(rf.to_pil(i))) for i in x])
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # padding is black before normalisation
    if hw[0] != hw[1]:
        corner = ours[:, :, 0, 0] if hw[0] < hw[1] else ours[:, :, -1, -1]
        torch.testing.assert_close(corner, (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)).expand(2, 3))


def test_a_pillow_that_resamples_differently_is_warned_about(monkeypatch):
    # pretend the installed Pillow is of the other kind (12 starts every resize horizontally, 13 this
    # one vertically): the probe against the real PIL must notice
    real = preprocess._pillow_major()
    monkeypatch.setattr(preprocess, "_pillow_major", lambda: 12 if real >= 13 else 13)
    monkeypatch.setattr(preprocess, "_CHECKED_GEOMETRIES", set())
    with pytest.warns(RuntimeWarning, match=r"Pillow 1[0-9.]+ resizes 300x900 to 290x224 \(bicubic\) differently"):
        assert not preprocess.check_pil_geometry((900, 300), (224, 290), "bicubic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # checked once per geometry
        preprocess.check_pil_geometry((900, 300), (224, 290), "bicubic")
    monkeypatch.undo()
    assert preprocess.check_pil_geometry((901, 300), (224, 290), "bicubic")


def test_prep_runs_in_float32_and_casts_at_the_end():
    x = rf.images(2, 37, 53)
    out = ImagePrep()(x, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out.float(), ImagePrep()(x), atol=2e-2, rtol=1e-2)


def test_bad_prep_settings_are_refused():
    with pytest.raises(ValueError, match="mode"):
        ImagePrep(mode="crop")
    with pytest.raises(ValueError, match="interpolation"):
        ImagePrep(interpolation="nearest")
    with pytest.raises(ValueError, match="resampler must be 'pil' or 'tensor', got 'cv2'"):
        ImagePrep(resampler="cv2")
    with pytest.raises(ValueError, match="always antialiases as PIL does"):
        ImagePrep(resampler="pil", antialias=False)
