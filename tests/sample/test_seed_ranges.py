"""Seed lists are lazy: `--seeds 0-4294967295` costs nothing up front (no list of four billion
seeds, no array of chunk indices), the chunks are np.array_split's, and images match those of an
explicit list; lists that must be expanded (network options) are bounded."""

import resource
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.errors import ConfigError
from edm2.nn import Precond
from edm2.sample.generate import Chunks, generate_batches, rank_chunks
from edm2.utils import MAX_INT, IntRanges, parse_int_list, parse_int_ranges, parse_std_list


def test_a_four_billion_seed_range_is_parsed_without_expanding_it():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    seeds = parse_int_ranges("0-4294967295")
    assert len(seeds) == 1 << 32 and seeds[-1] == (1 << 32) - 1 and seeds[123456789] == 123456789
    chunks = rank_chunks(len(seeds), 32, rank=1, world_size=2)
    assert len(chunks) == 1 << 26 and chunks[0] == range(32, 64) and chunks[-1].stop == 1 << 32
    assert time.monotonic() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing materialised


def test_int_ranges_index_slice_and_iterate_like_the_list():
    text = "5,10-14,3,100-102"
    expected = [5, 10, 11, 12, 13, 14, 3, 100, 101, 102]
    seeds = parse_int_ranges(text)
    assert list(seeds) == expected and seeds == expected and len(seeds) == len(expected)
    for i in range(-len(expected), len(expected)):
        assert seeds[i] == expected[i]
    for lo in range(len(expected) + 1):
        for hi in range(lo, len(expected) + 2):
            assert list(seeds[lo:hi]) == expected[lo:hi]
    with pytest.raises(IndexError):
        seeds[len(expected)]
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["0-99999999999999999999", str(MAX_INT + 1), "5-3", "a", "1-2-3", "-1"])
def test_bad_or_out_of_range_seed_lists_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_int_ranges(text)


def test_lists_that_are_expanded_are_bounded():
    with pytest.raises(ConfigError, match="more than the limit"):
        parse_int_list("0-4294967295")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="more than 65536 values"):
        parse_std_list("1e-300,2e-300,...,0.25")  # 2.5e299 stds
    assert time.monotonic() - start < 1
    assert len(parse_std_list("0.001,0.002,...,0.250")) == 250


@pytest.mark.parametrize("n, count", [(0, 1), (1, 1), (10, 3), (10, 4), (97, 8), (5, 7)])
def test_chunks_are_np_array_split(n, count):
    expected = [list(c) for c in np.array_split(np.arange(n), count)]
    assert [list(c) for c in Chunks(n, count)] == expected
    for first in range(count):
        for step in (1, 2, 3):
            assert [list(c) for c in Chunks(n, count, first, step)] == expected[first::step]


def test_generation_over_a_huge_range_starts_at_once_and_matches_an_explicit_list():
    torch.manual_seed(0)
    net = Precond(**tiny_network()).eval().requires_grad_(False)
    start = time.monotonic()
    huge = generate_batches(net, seeds=parse_int_ranges("7-4294967295"), max_batch=2, device="cpu", num_steps=2)
    first = next(huge)
    huge.close()
    assert time.monotonic() - start < 60
    [small] = list(generate_batches(net, seeds=[7, 8], max_batch=2, device="cpu", num_steps=2))
    assert first.seeds == [7, 8] and torch.equal(first.images, small.images)
    assert first.num_batches == 2147483645


def test_cli_parses_a_huge_seed_range_lazily(tmp_path):
    start = time.monotonic()
    r = CliRunner().invoke(
        main,
        [
            "generate",
            "--net",
            str(tmp_path / "none.safetensors"),
            "--outdir",
            str(tmp_path / "o"),
            "--seeds",
            "0-4294967295",
        ],
    )
    assert time.monotonic() - start < 60
    assert r.exit_code == 1 and "none.safetensors" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(
        main, ["generate", "--net", "x", "--outdir", str(tmp_path / "o"), "--seeds", "0-" + "9" * 25]
    )
    assert r.exit_code == 2 and "exceeds the largest integer" in r.output


def test_seed_lists_given_to_the_library_are_checked():
    net = Precond(**tiny_network()).eval().requires_grad_(False)
    with pytest.raises(ConfigError, match="seeds must lie in"):
        next(generate_batches(net, seeds=[-1, 2], device="cpu"))
    with pytest.raises(ConfigError, match="seeds must lie in"):
        next(generate_batches(net, seeds=IntRanges([range(MAX_INT, MAX_INT + 2)]), device="cpu"))
