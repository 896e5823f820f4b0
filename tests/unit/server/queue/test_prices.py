"""DARKROOM_GPU_HOURLY_USD's forms and which entry prices a worker: its workerN entry, else the longest
part of its device's name, else its device kind, else the plain price, else 0; a malformed setting is a
ConfigError naming the entry and the forms (at start-up: tests/facade/test_usage.py); ComfyUI's device
names read as the entries match them."""

from __future__ import annotations

import pytest

from server.engine.worker import device_name
from server.errors import ConfigError
from server.queue.prices import HourlyPrices

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
A10 = "NVIDIA A10"


def test_each_worker_gets_the_most_specific_entry() -> None:
    prices = HourlyPrices.parse("1.5, cuda=2.49, CPU=0, worker1=0.75, H100=3.2, A10=0.6, a100=1.9")
    assert prices.entries == {
        "*": 1.5, "cuda": 2.49, "cpu": 0.0, "worker1": 0.75, "H100": 3.2, "A10": 0.6, "a100": 1.9,
    }  # fmt: skip
    assert prices.hourly_usd("cuda", 1, H100) == 0.75  # the worker's own entry first
    assert prices.hourly_usd("cuda", 0, H100) == 3.2  # then a part of its device's name
    assert prices.hourly_usd("cuda", 2, A100) == 1.9  # the longest part that matches: A100, not A10
    assert prices.hourly_usd("cuda", 3, A10) == 0.6
    assert prices.hourly_usd("cuda", 0, "NVIDIA L4") == 2.49  # then its device kind
    assert prices.hourly_usd("cpu", 0, "cpu") == 0.0
    assert prices.hourly_usd("rocm", 0, "AMD MI300X") == 1.5  # then the plain price
    assert prices.hourly_usd("cuda") == 2.49  # a row with no worker recorded: by kind only
    assert HourlyPrices.parse("cuda=2").hourly_usd("cpu", 0, "cpu") == 0.0  # nothing matches: unpriced
    assert HourlyPrices.parse("").entries == {} and HourlyPrices.parse("2.49").entries == {"*": 2.49}
    assert prices.cost_usd(3600.0, "cuda", 1, H100) == pytest.approx(0.75)
    assert HourlyPrices.parse("cuda=3.6").cost_usd(10.0, "cuda") == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cuda=-1", "'cuda=-1' is not a price"),
        ("cuda=lots", "'cuda=lots' is not a price"),
        ("cuda=inf", "'cuda=inf' is not a price"),
        ("worker1=", "'worker1=' is not a price"),
        ("=2.49", "'=2.49' names no device"),
        ("a=b=1", "'a=b=1' names no device"),
        ("cuda=1,CUDA=2", "'cuda' is priced twice"),
        ("2,3", "'*' is priced twice"),
    ],
)
def test_a_malformed_setting_fails_at_start_naming_the_entry_and_the_forms(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        HourlyPrices.parse(text)
    assert says in refused.value.message and "'worker1=0.75'" in refused.value.message


def test_comfyui_s_device_names_read_without_torch_device_and_allocator() -> None:
    def stats(name: str) -> dict[str, object]:
        return {"devices": [{"name": name, "type": "cuda", "index": 0}]}

    assert device_name(stats(f"cuda:0 {H100} : cudaMallocAsync")) == H100
    assert device_name(stats(f"cuda:1 {A10} : native")) == A10
    assert device_name(stats("cpu")) == "cpu"
    assert device_name({"devices": []}) == "" and device_name({}) == ""
    prices = HourlyPrices.parse("H100=3.2")
    assert prices.hourly_usd("cuda", 0, device_name(stats(f"cuda:0 {H100} : cudaMallocAsync"))) == 3.2
