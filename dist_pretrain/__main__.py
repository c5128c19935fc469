"""``python -m dist_pretrain ...`` = the ``dist-pretrain`` command (for srun / mpirun launches)."""

import sys

from dist_pretrain.cli import main

sys.exit(main())
