"""The mask picture is the training code's own mask: the packed layout and the rule every attention backend shares."""

from __future__ import annotations

import torch

from verl_mem1.training.attention import dense_mask
from verl_mem1.training.layout import pack_episode
from verl_mem1.viewer.load import load_episodes
from verl_mem1.viewer.mask import draw_mask, mask_codes


def _stardust(run):
    return next(e.record for e in load_episodes([run]) if e.record.id == "stardust")


def test_codes_are_the_dense_mask_coloured_by_the_key_segment(eval_runs):
    record = _stardust(eval_runs["mem1"])
    sample = pack_episode(record)
    codes, positions = mask_codes(record, max_pixels=sample.length)
    assert codes.shape == (sample.length, sample.length) and positions.tolist() == list(range(sample.length))
    reference = dense_mask(sample.segment_ids)[0, 0]
    assert torch.equal(torch.from_numpy(codes) > 0, reference)
    keys = (sample.segment_ids + 1)[None, :].expand_as(reference)
    assert torch.equal(torch.from_numpy(codes)[reference], keys[reference])
    p = sample.prompt_len
    assert (codes[p:, :p] == 1).all(), "every segment reads the whole prompt"
    last = torch.nonzero(sample.segment_ids == sample.segment_ids.max()).flatten()
    assert (codes[last[0] :, p : last[0]] == 0).all(), "the last turn's segment reads no earlier segment"


def test_long_samples_are_drawn_at_evenly_spaced_positions(eval_runs, tmp_path):
    record = _stardust(eval_runs["full"])
    length = pack_episode(record).length
    codes, positions = mask_codes(record, max_pixels=64)
    assert codes.shape == (64, 64) and positions[0] == 0 and positions[-1] == length - 1
    full_codes, _ = mask_codes(record, max_pixels=length)
    assert (codes == full_codes[positions][:, positions]).all()
    png = draw_mask(record, tmp_path / "mask.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
