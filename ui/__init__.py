"""vlmgate.ui"""
