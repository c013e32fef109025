"""Tests of longtail.data.augment against torchvision, the reference for the augmentation.

Every output is matched exactly against the (2p + 1)² · 2 crops and flips that
``torchvision.transforms.functional`` computes for its input, which recovers the draw; the draws'
distribution is compared with torchvision's ``RandomCrop`` + ``RandomHorizontalFlip`` by χ² tests
on fixed seeds with a generous threshold (p > 1e-3).
"""

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from scipy import stats

from longtail.data.augment import normalize, random_crop_flip

P_VALUE = 1e-3


def random_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    # Values >= 1, so that the zero padding can be told apart from the image.
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, shape, generator=gen, dtype=torch.uint8)


def candidate_draws(padding: int) -> list[tuple[int, int, bool]]:
    """(top, left, flipped) for every candidate, in the order of :func:`candidates`."""
    side = range(2 * padding + 1)
    return [(top, left, flip) for top in side for left in side for flip in (False, True)]


def candidates(image: torch.Tensor, padding: int) -> torch.Tensor:
    """(K, C, H, W): every crop and flip of one image, computed with torchvision."""
    height, width = image.shape[-2:]
    padded = TF.pad(image, [padding])
    out = []
    for top, left, flip in candidate_draws(padding):
        crop = TF.crop(padded, top, left, height, width)
        out.append(TF.hflip(crop) if flip else crop)
    return torch.stack(out)


def match(outputs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """(B,) index of the candidate each output equals; asserts that there is exactly one."""
    equal = (outputs.flatten(1)[:, None] == cands.flatten(1)[None]).all(dim=2)  # (B, K)
    assert bool((equal.sum(dim=1) == 1).all()), "an output is not exactly one candidate crop/flip"
    return equal.int().argmax(dim=1)


def recover(outputs: torch.Tensor, images: torch.Tensor, padding: int) -> torch.Tensor:
    """(B,) index of the candidate of ``images[b]`` that ``outputs[b]`` equals."""
    return torch.cat(
        [
            match(out[None], candidates(image, padding))
            for out, image in zip(outputs, images, strict=True)
        ]
    )


def torchvision_pipeline(size: tuple[int, int], padding: int) -> T.Compose:
    return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(p=0.5)])


# ------------------------------------------------------------------------------ shapes, exactness
@pytest.mark.parametrize(("shape", "padding"), [((5, 3, 32, 32), 4), ((5, 1, 8, 8), 2)])
def test_shape_and_dtype_match_torchvision(shape: tuple[int, ...], padding: int) -> None:
    images = random_images(shape)
    ours = random_crop_flip(
        images, padding=padding, flip=True, generator=torch.Generator().manual_seed(0)
    )
    theirs = torchvision_pipeline(shape[-2:], padding)(images)
    assert ours.shape == theirs.shape == images.shape
    assert ours.dtype == theirs.dtype == torch.uint8
    assert ours.device == images.device


@pytest.mark.parametrize(("shape", "padding"), [((16, 3, 32, 32), 4), ((16, 1, 8, 6), 2)])
def test_every_output_is_the_documented_candidate(shape: tuple[int, ...], padding: int) -> None:
    """Exact equality with torchvision's pad + crop + hflip, at the documented draws."""
    images = random_images(shape, seed=1)
    out = random_crop_flip(
        images, padding=padding, flip=True, generator=torch.Generator().manual_seed(3)
    )
    found = recover(out, images, padding)
    # Replay the documented draws: offsets (2, B) first, then the flips.
    replay = torch.Generator().manual_seed(3)
    top, left = torch.randint(0, 2 * padding + 1, (2, shape[0]), generator=replay)
    flipped = torch.rand(shape[0], generator=replay) < 0.5
    draws = candidate_draws(padding)
    expected = [(int(y), int(x), bool(f)) for y, x, f in zip(top, left, flipped, strict=True)]
    assert [draws[i] for i in found.tolist()] == expected


def test_no_padding_no_flip_is_the_identity() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in ((4, 3, 9, 7), (2, 3, 4, 9, 7)):
        images = random_images(shape)
        out = random_crop_flip(images, padding=0, flip=False, generator=gen)
        assert torch.equal(out, images)


def test_flip_only_returns_the_image_or_its_mirror_both_seen() -> None:
    images = random_images((32, 2, 5, 5))
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == TF.hflip(images)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool(same.any()) and bool(mirrored.any())


def test_same_seed_same_output_other_seed_other_output() -> None:
    images = random_images((8, 3, 16, 16))

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return random_crop_flip(images, padding=4, flip=True, generator=gen)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


# ------------------------------------------------------------------------------ video
def test_video_clips_share_one_draw_across_frames() -> None:
    clips = random_images((12, 2, 3, 8, 8), seed=2)  # (B, C, T, H, W)
    out = random_crop_flip(clips, padding=2, flip=True, generator=torch.Generator().manual_seed(4))
    assert out.shape == clips.shape and out.dtype == torch.uint8
    per_frame = torch.stack(
        [recover(out[:, :, t], clips[:, :, t], padding=2) for t in range(3)], dim=1
    )  # (B, T)
    assert torch.equal(per_frame, per_frame[:, :1].expand(12, 3))  # one draw per clip
    assert len(set(per_frame[:, 0].tolist())) > 1  # independent across clips
    # The clip batch consumes the same draws as an image batch of the same size.
    frames = clips[:, :, 0]
    as_images = random_crop_flip(
        frames, padding=2, flip=True, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(as_images, out[:, :, 0])


# ------------------------------------------------------------------------------ distribution
@pytest.mark.parametrize(("size", "padding", "draws"), [(8, 2, 3000), (12, 4, 4860)])
def test_distribution_of_crops_and_flips_equals_torchvision(
    size: int, padding: int, draws: int
) -> None:
    image = random_images((1, size, size), seed=5)
    positions = (2 * padding + 1) ** 2
    ours = random_crop_flip(
        image.expand(draws, -1, -1, -1).contiguous(),
        padding=padding,
        flip=True,
        generator=torch.Generator().manual_seed(6),
    )
    pipeline = torchvision_pipeline((size, size), padding)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
        torch.manual_seed(6)
        theirs = torch.stack([pipeline(image) for _ in range(draws)])
    cands = candidates(image, padding)
    assert len(cands.flatten(1).unique(dim=0)) == 2 * positions  # the draw can be recovered
    hist = {}
    for name, out in (("ours", ours), ("torchvision", theirs)):
        found = match(out, cands)
        hist[name] = (
            torch.bincount(found // 2, minlength=positions),  # (top, left) position
            torch.bincount(found % 2, minlength=2),  # flipped or not
        )
    for offsets, flips in hist.values():  # each is uniform ...
        assert stats.chisquare(offsets).pvalue > P_VALUE
        assert stats.chisquare(flips).pvalue > P_VALUE
    for k in range(2):  # ... and the two samples come from one distribution
        table = torch.stack([hist["ours"][k], hist["torchvision"][k]]).numpy()
        assert stats.chi2_contingency(table).pvalue > P_VALUE


# ------------------------------------------------------------------------------ normalize
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 3, 4, 5, 6)])
def test_normalize_matches_to_tensor_then_normalize(shape: tuple[int, ...]) -> None:
    images = random_images(shape)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    by_channel = images.float().div(255).movedim(1, 0)  # (C, B, ...)
    expected = torch.stack([(by_channel[c] - mean[c]) / std[c] for c in range(3)]).movedim(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    half = normalize(images, mean, std, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, expected.bfloat16())


def test_normalize_of_four_dims_matches_torchvision() -> None:
    images = random_images((2, 1, 4, 4))
    out = normalize(images, [0.5], [0.25])
    torch.testing.assert_close(out, TF.normalize(images.float() / 255, [0.5], [0.25]))


# ------------------------------------------------------------------------------ errors
def test_bad_inputs_are_refused() -> None:
    gen = torch.Generator()
    images = random_images((2, 3, 4, 4))
    with pytest.raises(ValueError, match="images: expected uint8"):
        random_crop_flip(images.float(), padding=1, flip=True, generator=gen)
    with pytest.raises(ValueError, match="images: expected uint8"):
        random_crop_flip(images[0], padding=1, flip=True, generator=gen)
    with pytest.raises(ValueError, match="padding: expected an integer >= 0, got -1"):
        random_crop_flip(images, padding=-1, flip=True, generator=gen)
    with pytest.raises(ValueError, match="expected 3 values each"):
        normalize(images, [0.5], [0.5])
    with pytest.raises(ValueError, match="std: expected positive values"):
        normalize(images, [0.5] * 3, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="images_uint8: expected a uint8 tensor"):
        normalize(images.float(), [0.5] * 3, [0.5] * 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_stays_on_the_device_and_is_exact() -> None:
    images = random_images((8, 3, 8, 8)).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = random_crop_flip(images, padding=2, flip=True, generator=gen)
    assert out.device == images.device
    recover(out.cpu(), images.cpu(), padding=2)
    with pytest.raises(ValueError, match="generator: expected one on the images' device"):
        random_crop_flip(images, padding=2, flip=True, generator=torch.Generator())
