"""Converter throughput: synthetic demonstration bags (MCAP) -> episodes with sernf-bag2zarr.

Prints messages/s and images/s over the whole conversion (reading, decoding, resampling,
writing the store). Bags: 50 Hz joints, 40 Hz EE pose, 30 Hz executed commands, two 30 Hz
cameras (one raw rgb8, one PNG-compressed) at ``--size`` pixels.

    python bench/bag2zarr.py [--bags 4] [--seconds 20] [--size 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "sernf_data" / "test"))

import synthetic_bags as sb  # noqa: E402 - the analytic bag writer of the converter's tests
from rosbags.highlevel import AnyReader  # noqa: E402

from sernf_data.bag2zarr import ConversionConfig, convert_bags  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    args = parser.parse_args()
    sb.H = sb.W = args.size
    config = ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw",
                                            "under_rgb": "/cameras/under/image_raw/compressed"})
    with tempfile.TemporaryDirectory() as tmp:
        bags = []
        for i in range(args.bags):
            demo = sb.DemoBag(duration=args.seconds, episodes=[(0.05, args.seconds - 0.05, "operator retrieve=1 cut=1")])
            bags.append(sb.write_demo_bag(Path(tmp) / f"bag{i}", demo))
        messages = images = 0
        for bag in bags:
            with AnyReader([bag]) as reader:
                messages += reader.message_count
                images += sum(c.msgcount for c in reader.connections if "image" in c.topic)
        start = time.perf_counter()
        report = convert_bags(bags, Path(tmp) / "out.zarr", config)
        elapsed = time.perf_counter() - start
    assert not report.skipped, report.skipped
    print(f"bag2zarr: {args.bags} bags x {args.seconds:g} s, {args.size}x{args.size} images: "
          f"{messages} messages ({images} images) -> {report.steps} steps in {elapsed:.2f} s")
    print(f"  {messages / elapsed:,.0f} messages/s   {images / elapsed:,.0f} images/s")


if __name__ == "__main__":
    main()
