"""The jobs a user runs, one module each. Installed as console scripts (`l2v-adapt`, `l2v-embed`,
`l2v-search`, `l2v-evaluate`; see pyproject.toml) and still runnable as `python jobs/X.py`
(also under `ray job submit --working-dir .`). Their command-line convention: pipelines/cli.py."""
