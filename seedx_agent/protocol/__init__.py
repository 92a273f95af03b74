"""The agent tool-call protocol: how SEED-X writes a tool call (``tool_calls``), constrained decoding that keeps
a call well formed and copies arguments from the request (``copy_arguments``), and the incremental JSON prefix
check it relies on (``json_prefix``)."""
