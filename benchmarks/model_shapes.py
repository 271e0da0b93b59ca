"""Model shapes the benchmarks build from configs (random weights: speed and memory depend on the shape only)."""

# SmolLM2-135M(-Instruct)'s LlamaConfig fields that set its shape
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
