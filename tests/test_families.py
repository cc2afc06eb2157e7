"""The family table and LoRA targets found from the architecture (nodes/host/families.py), without
ComfyUI: toy networks shaped like the families' blocks. The host tests (tests/host/
test_families_host.py) run the real ComfyUI classes of every family."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodes.host import families as F  # noqa: E402


class SelfAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)


class DoubleBlock(nn.Module):  # Flux's: attention and MLP per stream, modulation
    def __init__(self, d):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.img_attn = SelfAttention(d)
        self.img_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class SingleBlock(nn.Module):  # Flux's: one fused matrix in, one out
    def __init__(self, d):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d, 7 * d), nn.Linear(5 * d, d)
        self.modulation = nn.Linear(d, 3 * d)


class FeedForward(nn.Module):  # Lumina's: named w1..w3, found by the class name
    def __init__(self, d):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, 2 * d)


class JointAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)


class LuminaBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attention, self.feed_forward = JointAttention(d), FeedForward(d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 4 * d))


class FluxLike(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.img_in, self.time_in = nn.Linear(4, d), nn.Sequential(nn.Linear(d, d))
        self.double_blocks = nn.ModuleList([DoubleBlock(d)])
        self.single_blocks = nn.ModuleList([SingleBlock(d)])
        self.final_layer = nn.Linear(d, 4)


class LuminaLike(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.x_embedder = nn.Linear(4, d)
        self.cap_embedder = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.noise_refiner = nn.ModuleList([LuminaBlock(d)])
        self.layers = nn.ModuleList([LuminaBlock(d), LuminaBlock(d)])


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.proj = nn.Conv2d(4, 4, 3), nn.Linear(4, 4)


class ConvNet(nn.Module):  # no attention anywhere: a structure the presets cannot serve
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock()])
        self.body = nn.ModuleList([ConvBlock()])


def test_the_blocks_are_the_repeated_modules_with_linear_layers():
    assert [p for p, _ in F.blocks(FluxLike())] == ["double_blocks.0", "single_blocks.0"]
    assert [p for p, _ in F.blocks(LuminaLike())] == ["noise_refiner.0", "layers.0", "layers.1"]


def test_flux_attention_takes_the_fused_single_block_layers_and_not_the_modulation():
    flux = F.family_of("Flux")
    assert F.target_modules(FluxLike(), "attention", flux) == [
        "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "single_blocks.0.linear1",
        "single_blocks.0.linear2"]
    assert F.target_modules(FluxLike(), "attention+mlp", flux) == [
        "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
        "double_blocks.0.img_mlp.2", "single_blocks.0.linear1", "single_blocks.0.linear2"]
    every = F.target_modules(FluxLike(), "all linear", flux)
    assert "img_in" in every and "double_blocks.0.img_mod.1" in every and len(every) == 11


def test_lumina_attention_is_found_by_name_and_its_mlp_by_class():
    z = F.family_of("ZImage")
    att = F.target_modules(LuminaLike(), "attention", z)
    assert att == [f"{b}.attention.{n}" for b in ("noise_refiner.0", "layers.0", "layers.1") for n in ("qkv", "out")]
    both = F.target_modules(LuminaLike(), "attention+mlp", z)
    assert "layers.1.feed_forward.w3" in both and not [t for t in both if "adaLN" in t or "embedder" in t]


def test_a_structure_without_attention_is_refused_naming_what_was_looked_for_and_found():
    with pytest.raises(ValueError) as e:
        F.target_modules(ConvNet(), "attention", F.family_of("SomethingNew"))
    text = str(e.value)
    assert "2 block(s) in blocks, body but no attention layers in them" in text
    assert "not one of ProGRPO's families" in text and "Choose targets 'all linear'" in text
    assert F.target_modules(ConvNet(), "all linear") == ["blocks.0.proj", "body.0.proj"]
    with pytest.raises(ValueError, match="has no Linear layer"):
        F.target_modules(nn.Sequential(nn.Conv2d(1, 1, 1)), "all linear")


def test_the_table_gives_each_family_its_defaults():
    assert F.family_of("Flux").cfg == 1.0 and F.family_of("Flux").guidance == 3.5
    assert F.family_of("SD15").cfg == F.family_of("SD3").cfg == 4.5 and F.family_of("SD15").name == "SD1.x"
    assert (F.family_of("QwenImage").cfg, F.family_of("Chroma").cfg, F.family_of("WAN21_T2V").cfg) == (2.5, 4.0, 6.0)
    assert F.family_of("SDXL").name == "SDXL" and F.family_of("SDXL", v_prediction=True).name == "SDXL v-prediction"
    assert F.family_of("ZImage").few_step and F.family_of("FluxSchnell").steps == 4
    assert F.family_of("WAN21_T2V").video and not F.family_of("QwenImage").video
    unknown = F.family_of("AuraFlow")
    assert not unknown.listed and unknown.name == "unlisted (AuraFlow)" and unknown.cfg == 4.5
    configs = [c for f in F.FAMILIES for c in f.configs if f.prediction != "v"]
    assert len(configs) == len(set(configs)), "a ComfyUI config in two families"
