"""Rolling KV cache vs recomputing the history, chunks 1…200 (`vidfx bench cache` with a plot)."""

import sys

from vidfx.cli import main

if __name__ == "__main__":
    sys.exit(
        main(
            [
                "bench",
                "cache",
                "--plot",
                "benchmarks/cache.png",
                "--json",
                "benchmarks/cache.json",
                "--progress",
                *sys.argv[1:],
            ]
        )
    )
