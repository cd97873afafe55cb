import gc
import sys

from .cli import main

code = main()
# Python's last collection at exit walks every object a command left (0.4 s after a
# 10k-operation dump); the process ends here, so nothing needs collecting.
gc.freeze()
sys.exit(code)
