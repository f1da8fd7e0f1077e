"""Adaptation on Ray Train: MNTP and SimCSE stages, each a TorchTrainer run that checkpoints and resumes.

- `config`: pydantic settings of a run (what the YAML files in jobs/configs hold)
- `data`: Ray Data reading of a corpus, packing into token blocks, sentence splitting
- `mntp_loop`, `simcse_loop`: one readable training loop per stage (runs on every worker)
- `loop_tools`: what both loops share (model building, optimizer, checkpoints, step log)
- `distributed`: all-gather with gradient for cross-worker negatives
- `trainer`: the TorchTrainer factory and `run_stage`
- `export`: merge adapters into the base and write the encoder folder
- `chain`: the whole bidirectional -> MNTP -> SimCSE -> export chain (used by jobs/adapt.py)
"""
