"""vlmgate.finetune"""
