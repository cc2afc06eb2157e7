"""Reward preprocessing against the reference pipelines, pixel for pixel, on odd image sizes."""
from __future__ import annotations

import pytest
import torch

import reward_fixtures as rf  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from progrpo_core.rewards.preprocess import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePrep, centre_crop_offset,
                                             prep_from_hf_processor)

SIZES = [(37, 53), (53, 37), (300, 517), (517, 300), (64, 65), (65, 64), (224, 224), (1024, 768)]
ONE_LEVEL = 1.1 / 255          # PIL rounds each 8-bit pass; we do not


def _clip_processor():
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor(**{k: v for k, v in rf.LEGACY_PREPROCESSOR.items() if k != "feature_extractor_type"})


@pytest.mark.parametrize("hw", SIZES)
def test_clip_processor_float_path_is_reproduced_exactly(hw):
    # transformers' CLIPImageProcessor on float tensors (do_rescale=False) runs the same resize
    # without clipping; crop offset, sizes and interpolation must then agree to float precision.
    proc = _clip_processor()
    x = rf.images(2, *hw, seed=hw[0], quantised=False)
    ref = proc(images=list(x), do_rescale=False, return_tensors="pt")["pixel_values"]
    ours = ImagePrep(clamp=False)(x)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("hw", SIZES)
def test_clip_processor_on_pil_images_within_one_level(hw):
    # The way PickScore/CLIP users call it: PIL images in, 8-bit resampling inside.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    proc_pil = CLIPImageProcessorPil(**{k: v for k, v in rf.LEGACY_PREPROCESSOR.items()
                                        if k != "feature_extractor_type"})
    x = rf.images(2, *hw, seed=hw[1])
    prep = prep_from_hf_processor(_clip_processor())
    ours = prep.geometry(x)
    for backend in (_clip_processor(), proc_pil):
        ref = backend(images=[rf.to_pil(i) for i in x], do_normalize=False, return_tensors="pt")["pixel_values"]
        assert (ours - ref).abs().max() <= ONE_LEVEL
    # and the normalisation is the processor's
    ref = _clip_processor()(images=[rf.to_pil(i) for i in x], return_tensors="pt")["pixel_values"]
    assert (prep(x) - ref).abs().max() <= ONE_LEVEL / min(OPENAI_CLIP_STD)


def _openai_clip_transform():
    import torchvision.transforms as T
    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])


@pytest.mark.parametrize("hw", SIZES)
def test_torchvision_resize_centercrop_as_openai_clip(hw):
    # aesthetic and ImageReward use OpenAI CLIP's transform: torchvision Resize + CenterCrop on PIL.
    x = rf.images(1, *hw, seed=3)
    prep = ImagePrep(crop_rounding="round")
    ref = _openai_clip_transform()(rf.to_pil(x[0]))[None]
    assert (prep.geometry(x) - ref).abs().max() <= ONE_LEVEL
    # on float tensors torchvision runs exactly our resize; crop offsets must agree exactly
    import torchvision.transforms as T
    tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    torch.testing.assert_close(ImagePrep(crop_rounding="round", clamp=False).geometry(x), tf(x), atol=2e-6, rtol=0)


def test_crop_rounding_rules_differ_where_the_references_do():
    # 64x65 resizes to 224x227: torchvision rounds the offset 1.5 to 2, transformers floors it to 1.
    x = rf.images(1, 64, 65, seed=0, quantised=False)
    floor = ImagePrep(crop_rounding="floor", clamp=False).geometry(x)
    rnd = ImagePrep(crop_rounding="round", clamp=False).geometry(x)
    assert (floor - rnd).abs().max() > 1e-2
    assert centre_crop_offset(227, 224, "round") == 2 and centre_crop_offset(227, 224, "floor") == 1
    assert centre_crop_offset(225, 224, "round") == 0 and centre_crop_offset(229, 224, "round") == 2


@pytest.mark.parametrize("hw", SIZES + [(100, 224), (224, 100), (225, 100)])
def test_hps_resize_longest_and_pad_matches_reference(hw):
    import torchvision.transforms.functional as TF
    x = rf.images(2, *hw, seed=hw[0] + hw[1])
    prep = ImagePrep(size=224, crop=None, mode="longest", clamp=False)
    ours = prep(x)
    if max(hw) == 224 and hw[0] != hw[1]:
        # the reference leaves such images unpadded (and open_clip then fails); we pad
        ref = TF.normalize(TF.pad(x, [(224 - hw[1]) // 2, (224 - hw[0]) // 2, 224 - hw[1] - (224 - hw[1]) // 2,
                                      224 - hw[0] - (224 - hw[0]) // 2], fill=0), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    else:
        ref = torch.stack([rf.hps_resize_max_size(TF.to_tensor(rf.to_pil(i))) for i in x])
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # padding is black before normalisation
    if hw[0] != hw[1]:
        corner = ours[:, :, 0, 0] if hw[0] < hw[1] else ours[:, :, -1, -1]
        torch.testing.assert_close(corner, (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD)).expand(2, 3))


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
