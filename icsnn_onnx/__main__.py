import sys

from icsnn_onnx.cli import main

sys.exit(main())
