"""vlmgate.quantize"""
