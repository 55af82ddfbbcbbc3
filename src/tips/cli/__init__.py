"""tips.cli: the top floor — every console script's ``main``, its parser and ``--help`` examples, the flags the
commands share, the demo images and process tuning (the CPU allocator). May import every floor below; the only
place in the library that imports ``argparse``."""
