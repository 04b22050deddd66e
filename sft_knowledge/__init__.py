"""sft_knowledge: what supervised fine-tuning does to a model's knowledge (Ye et al., EMNLP 2025)."""
