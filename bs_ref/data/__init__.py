"""TOFU data (real, from the hub or a local directory) and the embedded synthetic benchmark."""

from bs_ref.data.qa import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    TOFU_CONFIGS,
    QADataset,
    collate_prompts,
    collate_train,
    encode_answer,
    encode_prompt,
    encode_qa,
    forget_retain_configs,
    load_tofu,
)
from bs_ref.data.synthetic import (
    SyntheticConfig,
    benchmark_texts,
    build_benchmark,
    load_benchmark,
    training_corpus,
    write_benchmark,
)

__all__ = [
    "SyntheticConfig",
    "benchmark_texts",
    "build_benchmark",
    "load_benchmark",
    "training_corpus",
    "write_benchmark",
    "IGNORE_INDEX",
    "PLAIN_TEMPLATE",
    "TOFU_CONFIGS",
    "QADataset",
    "collate_prompts",
    "collate_train",
    "encode_answer",
    "encode_prompt",
    "encode_qa",
    "forget_retain_configs",
    "load_tofu",
]
