"""Example fine-tuning tasks: data generators and the YAML configs that train on them."""
