"""Convert a Hugging Face Phi-2 checkpoint to a phi2cpu GGUF file: see `--help`."""
import sys

import phi2cpu.quantize

if __name__ == "__main__":
    sys.exit(phi2cpu.quantize.main())
