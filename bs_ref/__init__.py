"""bs_ref — reference implementation of bootstrapping (BS) unlearning.

Li, Wang, Wang, Li, Liu, Han, Zhou. "LLM Unlearning with LLM Beliefs". ICLR 2026. arXiv:2510.19422.
"""

__version__ = "0.1.0"
