"""Development tools that are not part of the installed engine.

`tiny_model` builds the project's tiny DTG-format test model (HF folder and GGUF
files) for the tests, the benchmarks and offline trials. It lives outside
`dtg_lib` so the runtime package does not carry a model trainer; run it from a
checkout of the repository: `python -m dtg_dev.tiny_model OUT_DIR`.
"""
