"""bs_ref — reference implementation of bootstrapping (BS) unlearning.

Li, Wang, Wang, Li, Liu, Han, Zhou. "LLM Unlearning with LLM Beliefs". ICLR 2026. arXiv:2510.19422.
"""

import logging

__version__ = "0.1.0"

# Where bitsandbytes is installed (the [attacks] extra), transformers imports it through peft, and on CPUs with
# AVX512-BF16 it warns on import that an optional fused 4-bit kernel (fetched from a model hub) is missing. bs_ref
# never uses that kernel (bs_ref.attacks.quantize turns the fast path off), so the warning says nothing here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
