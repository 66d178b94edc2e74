"""vlmgate.serve.adapters"""
