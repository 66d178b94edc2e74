"""vlmgate.quantize: INT4 (W4A16) bases with llm-compressor, their measured cost, and the LoRA drift check.

Modules: cli (the `vlmgate quantize` command), config (settings), job (one run end to end), env (the isolated
llm-compressor environment), worker (the job inside that environment), evaluate (held-out accuracy), dequant
(INT4 checkpoint -> dense weights), sizes (weight accounting), report (JSON + Markdown), drift (adapter drift
check and the gateway's policy), bench (INT4 vs bf16 on one engine build).

Run as: vlmgate quantize --help
"""
