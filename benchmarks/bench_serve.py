"""`vidfx bench serve`: served FPS, latency and drops at 1, 2, 4 streams vs the standalone engine."""

import sys

from vidfx.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "serve", "--json", "benchmarks/serve.json", *sys.argv[1:]]))
