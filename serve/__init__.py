"""vlmgate.serve: the OpenAI-compatible gateway in front of one or more engines (vLLM, SGLang, any upstream).

Run as: vlmgate serve --help
"""
