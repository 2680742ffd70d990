"""PNG encoder options on a phantom's display image and its heatmap overlay.

``python -m bench.png_options [--size 2048]``: CPU time (median of 5, ``process_time``,
less disturbed by other load than wall time) and size of ``cv2.imencode`` for each zlib
level, row filter and strategy, for the 8-bit grey source image and the colour overlay.
The settings in ``reports.images`` were chosen from this table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

FILTERS = {
    "adaptive": cv2.IMWRITE_PNG_ALL_FILTERS,
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
}
STRATEGIES = {
    "default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
    "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
    "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED,
}


def images(size: int) -> dict[str, np.ndarray]:
    from demo.phantoms import make_phantom
    from reports.images import render_heatmap_overlay, to_uint8_display

    phantom = make_phantom(1000, 0, size=size)
    display = to_uint8_display(phantom.image.astype(np.float32))
    heat = np.zeros((28, 28), np.float32)
    heat[8:14, 5:12] = 1.0
    blurred = np.asarray(cv2.GaussianBlur(heat, (0, 0), 3.0), np.float32)
    return {"grey source": display, "colour overlay": render_heatmap_overlay(display, blurred / blurred.max(), "x 50%")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    print(f"{'image':<16} {'level':>5} {'filter':>9} {'strategy':>9} {'cpu ms':>8} {'MB':>6}")
    for name, arr in images(args.size).items():
        for level in (1, 3, 6):
            for fname, flt in FILTERS.items():
                for sname, strategy in STRATEGIES.items():
                    params = [
                        cv2.IMWRITE_PNG_COMPRESSION,
                        level,
                        cv2.IMWRITE_PNG_FILTER,
                        flt,
                        cv2.IMWRITE_PNG_STRATEGY,
                        strategy,
                    ]
                    times, size = [], 0
                    for _ in range(5):
                        start = time.process_time()
                        size = len(cv2.imencode(".png", arr, params)[1])
                        times.append(time.process_time() - start)
                    print(
                        f"{name:<16} {level:>5} {fname:>9} {sname:>9} "
                        f"{statistics.median(times) * 1000:>8.1f} {size / 1e6:>6.2f}"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
