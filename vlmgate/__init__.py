"""vlmgate: serve vision-language models with hot-swapped LoRA adapters behind an OpenAI-compatible gateway.

The product's top-level folders (serve/, finetune/, quantize/, ui/, loadtest/) are the subpackages of this
namespace: `vlmgate.serve`, `vlmgate.finetune`, ... Run `vlmgate --help` for the commands.
"""

__version__ = "0.1.0"

from vlmgate.compat import install_import_hook

install_import_hook()
