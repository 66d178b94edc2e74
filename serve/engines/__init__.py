"""vlmgate.serve.engines"""
