"""Command-line flags for DanTagGen; the webui calls `preload` before parsing its flags."""


def preload(parser) -> None:
    # Self-contained: the extension folder is not importable yet when this runs.
    parser.add_argument(
        "--dtg-model-dir",
        type=str,
        default=None,
        help="DanTagGen: folder holding (or receiving) DTG models; overrides the setting",
    )
    parser.add_argument(
        "--dtg-device",
        type=str,
        default=None,
        help="DanTagGen: device for the DTG model (cpu, cuda, mps); overrides the setting",
    )
    parser.add_argument(
        "--dtg-threads",
        type=str,
        default=None,
        help="DanTagGen: CPU threads for llama.cpp: auto (physical cores, fewer while other "
        "work holds them) or a number; the same as DTG_THREADS",
    )
    # Read by install.py (from COMMANDLINE_ARGS); registered here so the webui accepts it.
    parser.add_argument(
        "--dtg-no-llama-build",
        action="store_true",
        help="DanTagGen: install llama-cpp-python only as a prebuilt wheel, never build it "
        "from source (minutes, needs a compiler); without it the torch backend is used",
    )
