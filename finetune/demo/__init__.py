"""vlmgate.finetune.demo"""
