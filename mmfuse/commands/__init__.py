"""One module per sub-command, each with `add_parser(subparsers)` and `run(args) -> exit code`.

To add a command: write `mmfuse/commands/<name>.py` and append its module name to `COMMANDS`.
"""

COMMANDS = ["finetune", "tune", "list", "demo_data", "shard", "embed", "export_onnx", "bench"]
