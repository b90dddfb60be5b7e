"""Shared helpers for spec-level tests: a minimal valid spec with fake data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml


def make_fake_data(root: Path) -> dict:
    """Tiny files with the layout the spec validation checks for (not a real corpus)."""
    root.mkdir(parents=True, exist_ok=True)
    prefix = root / "corpus"
    np.save(f"{prefix}_ids.npy", np.arange(10, dtype=np.uint16))
    np.savez(f"{prefix}_idx.npz", lens=np.array([10], np.int32), sents=np.array([0, 10]), docs=np.array([0, 1]))
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "a", "b"]) + "\n")
    return {"input_prefix": str(prefix), "vocab_file": str(vocab)}


def base_spec(tmp: Path, **sections) -> dict:
    data = make_fake_data(tmp / "data")
    spec = {
        "name": "t",
        "output_dir": str(tmp / "run"),
        "cluster": {"backend": "slurm", "time": "00:10:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": 1, "gpus_per_node": 0},
        "data": data,
        # pretraining from scratch: the built-in architecture, shrunk, random weights
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True, "hidden_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "intermediate_size": 128},
        "train": {"device": "cpu", "max_seq_len": 64, "micro_batch_size": 4, "max_steps": 10},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
