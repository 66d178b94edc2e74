"""vlmgate.loadtest"""
