"""Model code: rotary embeddings, attention (MHA, MLA), mixture-of-experts FFN and the decoder LM."""
