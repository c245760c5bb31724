"""Distillation traps: KL toolkit, across-tokenizer alignment, trap measures, student symptoms, diagnosis stage."""
